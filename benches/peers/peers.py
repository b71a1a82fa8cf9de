#!/usr/bin/env python3
"""Target tokens per second of CTranslate2 and transformers on the random
Marian checkpoint, with the settings tidings is measured under.

    peers.py --model DIR --ct2 DIR-ct2 --ct2-int8 DIR-ct2-int8 \
             --pieces pieces.jsonl --json results/peers.json [--only ct2|hf] \
             [--threads 2] [--new-tokens 28] [--hf-single 50]

Every output is exactly --new-tokens (L) new tokens long: the end token is
unreachable (final_logits_bias[eos] = -1e4) and the length is capped
(CTranslate2 `max_decoding_length = L`; transformers `max_new_tokens = L`,
whose last token is the end token that the checkpoint's forced_eos_token_id
forces there). The count of target tokens actually produced (decoder start
excluded) is checked to be L per sentence.

Settings: greedy (beam 1) and beam 4; batch 1 (one sentence per call, in
file order) and sorted batches of 32 (sentences sorted by source length in
tokens, ascending and stable, then cut into consecutive batches of 32, the
last one smaller; CTranslate2 gets them all in one `translate_batch` call with
`max_batch_size=32, batch_type="examples"`, transformers one `generate` call
per batch, padded to the batch's longest source). CTranslate2 runs with
`intra_threads=T, inter_threads=1` in float32 (the fp32 conversion) and int8
(the int8 conversion); transformers in float32 with `torch.set_num_threads(T)`,
its batch-1 settings on the first --hf-single sentences only. Each setting is
warmed up on one small batch first, untimed.
"""

import argparse
import copy
import json
import os
import sys
import time

BATCH = 32


def log(msg):
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


def sorted_batches(items, key):
    order = sorted(range(len(items)), key=lambda i: (key(items[i]), i))
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


class Check:
    def __init__(self, want):
        self.want = want

    def __call__(self, name, lengths):
        bad = [n for n in lengths if n != self.want]
        if bad:
            sys.exit(
                f"peers: {name}: {len(bad)} of {len(lengths)} outputs are not {self.want} tokens long "
                f"(lengths seen: {sorted(set(lengths))})"
            )


def run_ct2(args, rows, check):
    import ctranslate2

    log(f"CTranslate2 {ctranslate2.__version__}")
    out = []
    pieces = [r["pieces"] for r in rows]
    for kind, path, compute in (("fp32", args.ct2, "float32"), ("int8", args.ct2_int8, "int8")):
        tr = ctranslate2.Translator(
            path, device="cpu", compute_type=compute, intra_threads=args.threads, inter_threads=1
        )
        for beam in (1, 4):
            opts = dict(beam_size=beam, max_decoding_length=args.new_tokens, num_hypotheses=1)
            tr.translate_batch(pieces[:4], max_batch_size=BATCH, batch_type="examples", **opts)  # warm-up
            for batching in batchings(args):
                name = f"ctranslate2 {kind} beam {beam}, {batching}"
                t = time.perf_counter()
                if batching == "batch 1":
                    res = [tr.translate_batch([p], **opts)[0] for p in pieces]
                    hyps = [r.hypotheses[0] for r in res]
                else:
                    order = [i for b in sorted_batches(pieces, len) for i in b]
                    res = tr.translate_batch(
                        [pieces[i] for i in order], max_batch_size=BATCH, batch_type="examples", **opts
                    )
                    hyps = [r.hypotheses[0] for r in res]
                secs = time.perf_counter() - t
                lengths = [len(h) for h in hyps]
                check(name, lengths)
                out.append(result(name, "ctranslate2", kind, beam, batching, len(pieces), sum(lengths), secs))
                log(f"{name}: {out[-1]['tokens_per_s']:.1f} tokens/s")
        del tr
    return out


def run_hf(args, rows, check):
    import torch
    import transformers
    from transformers import MarianMTModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = MarianMTModel.from_pretrained(args.model, dtype=torch.float32).eval()
    pad = model.config.pad_token_id
    gen = model.generation_config
    gen.max_length = None
    gen.max_new_tokens = args.new_tokens
    gen.do_sample = False

    by_beam = {}
    for b in (1, 4):
        by_beam[b] = copy.deepcopy(gen)
        by_beam[b].num_beams = b

    def generate(batch, beam):
        n = max(len(r["ids"]) for r in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for j, r in enumerate(batch):  # right padding, as MarianTokenizer pads
            ids[j, : len(r["ids"])] = torch.tensor(r["ids"])
            mask[j, : len(r["ids"])] = 1
        with torch.inference_mode():
            seq = model.generate(input_ids=ids, attention_mask=mask, generation_config=by_beam[beam])
        # New tokens: all but the decoder start, up to and including the
        # (forced) end token; pads after an end would not count.
        lens = []
        for s in seq.tolist():
            assert s[0] == gen.decoder_start_token_id, s[:3]
            body = s[1:]
            while body and body[-1] == pad:
                body.pop()
            lens.append(len(body))
        return lens

    out = []
    for beam in (1, 4):
        generate(rows[:2], beam)  # warm-up
        for batching in batchings(args):
            sub = rows[: args.hf_single] if batching == "batch 1" else rows
            name = f"transformers fp32 beam {beam}, {batching}"
            if batching == "batch 1" and len(sub) < len(rows):
                name += f" (first {len(sub)} sentences)"
            t = time.perf_counter()
            lengths = []
            if batching == "batch 1":
                for r in sub:
                    lengths += generate([r], beam)
            else:
                by_pos = [None] * len(sub)
                for b in sorted_batches(sub, lambda r: len(r["ids"])):
                    for i, n in zip(b, generate([sub[i] for i in b], beam)):
                        by_pos[i] = n
                lengths = by_pos
            secs = time.perf_counter() - t
            check(name, lengths)
            out.append(result(name, "transformers", "fp32", beam, batching, len(sub), sum(lengths), secs))
            log(f"{name}: {out[-1]['tokens_per_s']:.1f} tokens/s")
    return out


def batchings(args):
    """The batchings measured: both, or the sorted batches alone (--batched-only)."""
    return ("sorted batches of 32",) if args.batched_only else ("batch 1", "sorted batches of 32")


def result(name, tool, kind, beam, batching, sentences, tokens, secs):
    return {
        "name": name,
        "tool": tool,
        "weights": kind,
        "beam": beam,
        "batching": batching,
        "sentences": sentences,
        "target_tokens": tokens,
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "sentences_per_s": sentences / secs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ct2", required=True)
    ap.add_argument("--ct2-int8", required=True)
    ap.add_argument("--pieces", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--only", choices=["ct2", "hf"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=28)
    ap.add_argument("--hf-single", type=int, default=50)
    ap.add_argument("--batched-only", action="store_true",
                    help="skip the one-sentence-at-a-time runs (a quicker repeat)")
    args = ap.parse_args()

    rows = [json.loads(l) for l in open(args.pieces, encoding="utf-8") if l.strip()]
    check = Check(args.new_tokens)
    results = []
    if args.only in (None, "ct2"):
        results += run_ct2(args, rows, check)
    if args.only in (None, "hf"):
        results += run_hf(args, rows, check)

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    doc = {
        "threads": args.threads,
        "new_tokens_per_sentence": args.new_tokens,
        "sentences": len(rows),
        "source_tokens": sum(len(r["ids"]) for r in rows),
        "batching": {
            "batch 1": "one sentence per call, in file order",
            "sorted batches of 32": "sorted by source length in tokens (ascending, stable), "
            "consecutive batches of 32 sentences (the last smaller)",
        },
        "results": results,
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\n{'setting':<62}{'sent':>6}{'tokens':>8}{'s':>9}{'tokens/s':>10}")
    for r in results:
        print(f"{r['name']:<62}{r['sentences']:>6}{r['target_tokens']:>8}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.1f}")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
