#!/usr/bin/env python3
"""The benchmark's input: the first N English sentences of the NTREX dev
articles (field `sentences`, in file order), for every tool alike.

    sentences.py --data ntrex-dev.jsonl --model MODEL_DIR --out DIR [--n 500]

Writes into DIR:
- sentences.jsonl: one record per sentence, {"id": "s0001", "text": "..."},
  the input of tidings;
- pieces.jsonl: {"id", "pieces", "ids"}, the source pieces (with the final
  `</s>`) and ids that MarianTokenizer of MODEL_DIR gives, the input of
  CTranslate2 (and, as ids, of transformers);
- plan.json: source lengths and the `runtime.batch-tokens` that makes
  tidings' batch planner (src/generate/batch.rs: length-sorted, packed while
  rows * longest * beams <= batch-tokens, at most 64 decoder rows) form
  batches of about 32 sentences, with the batch sizes it then forms.
"""

import argparse
import json
import math
import os
import sys

BATCH = 32  # sentences per batch, as the peers' sorted batches
MAX_ROWS = 64  # tidings' cap on inputs x beams per batch (src/generate/batch.rs)


def tidings_plan(lens, budget, beams):
    """The batches tidings' planner forms (a copy of generate::batch::plan)."""
    order = sorted(range(len(lens)), key=lambda i: (-lens[i], i))
    batches, cur, longest = [], [], 0
    for i in order:
        n = max(lens[i], 1)
        longest_if = max(longest, n)
        rows_if = len(cur) + 1
        fits = rows_if * longest_if * beams <= max(budget, 1) and rows_if * beams <= MAX_ROWS
        if cur and not fits:
            batches.append(cur)
            cur, longest = [], 0
        longest = max(longest, n)
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def budget_for(lens, beams):
    """The smallest batch-tokens with which tidings forms no more batches
    than ceil(N / 32) (or as few as its row cap allows, for beams > 1)."""
    want = max(math.ceil(len(lens) / BATCH), math.ceil(len(lens) * beams / MAX_ROWS))
    lo, hi = 1, max(lens) * BATCH * beams * 4
    while len(tidings_plan(lens, hi, beams)) > want:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tidings_plan(lens, mid, beams)) <= want:
            hi = mid
        else:
            lo = mid + 1
    return lo


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()

    sents = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                sents.extend(json.loads(line)["sentences"])
            if len(sents) >= args.n:
                break
    sents = sents[: args.n]
    if len(sents) < args.n:
        sys.exit(f"sentences: only {len(sents)} sentences in {args.data}, {args.n} asked")
    if len(set(sents)) != len(sents):
        # tidings translates a repeated segment once; the peers would not.
        sys.exit("sentences: the sentences are not all distinct")

    import sentencepiece as spm
    from transformers import MarianTokenizer

    tok = MarianTokenizer.from_pretrained(args.model)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "source.spm"))
    vocab = json.load(open(os.path.join(args.model, "vocab.json"), encoding="utf-8"))
    os.makedirs(args.out, exist_ok=True)
    lens = []
    with open(os.path.join(args.out, "sentences.jsonl"), "w", encoding="utf-8") as fs, open(
        os.path.join(args.out, "pieces.jsonl"), "w", encoding="utf-8"
    ) as fp:
        for k, s in enumerate(sents, 1):
            rid = f"s{k:04d}"
            ids = tok(s)["input_ids"]
            pieces = tok.convert_ids_to_tokens(ids)
            # What tidings computes (spm pieces looked up in vocab.json, then
            # </s>): if MarianTokenizer normalised the text first (sacremoses
            # installed), the tools would not get the same input.
            want = [vocab.get(p, vocab["<unk>"]) for p in sp.encode(s, out_type=str)] + [vocab["</s>"]]
            if ids != want:
                sys.exit(f"sentences: MarianTokenizer and plain SentencePiece disagree on {rid}: {s!r}")
            fs.write(json.dumps({"id": rid, "text": s}, ensure_ascii=False) + "\n")
            fp.write(json.dumps({"id": rid, "pieces": pieces, "ids": ids}, ensure_ascii=False) + "\n")
            lens.append(len(ids))

    plan = {"n": len(sents), "source_tokens": sum(lens), "lengths": lens, "tidings": {}}
    for beams in (1, 4):
        budget = budget_for(lens, beams)
        sizes = sorted((len(b) for b in tidings_plan(lens, budget, beams)), reverse=True)
        plan["tidings"][f"beam{beams}"] = {"batch_tokens": budget, "batch_sizes_one_worker": sizes}
    with open(os.path.join(args.out, "plan.json"), "w") as f:
        json.dump(plan, f)
    print(
        f"[sentences] {len(sents)} sentences, {sum(lens)} source tokens (with </s>), "
        f"lengths {min(lens)}..{max(lens)}, mean {sum(lens) / len(lens):.1f}",
        file=sys.stderr,
    )
    for k, v in plan["tidings"].items():
        s = v["batch_sizes_one_worker"]
        print(
            f"[sentences] tidings {k}: batch-tokens {v['batch_tokens']} -> {len(s)} batches "
            f"(one worker), sizes {s}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
