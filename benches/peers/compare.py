#!/usr/bin/env python3
"""Prints tidings' throughput next to the peers' and the ratios, from the
JSON files benches/peers/run.sh leaves in a results folder:
peers.json (peers.py), tidings-segments.json (below) and
tidings-beamB-workersW.json (`tidings bench --json`).

    compare.py segments --results DIR --data DATA_DIR
    compare.py table --results DIR --plan DATA_DIR/plan.json [--new-tokens 28]

`segments` reads the output of a cheap `tidings run` (2 new tokens: one, then
the forced end token; so a record's output_tokens is its count of
segments) and writes tidings-segments.json: how many segments tidings makes
of the sentences (its segmenter cuts some of NTREX's sentences in two, which
the peers translate whole) and how many source tokens it feeds the model.

tidings' speed is target tokens over the seconds of its `translate:es`
stage (model loading is a stage of its own, not counted; neither do the
peers count theirs). Every sentence costs every tool the same L decoder
steps. The checkpoint's forced_eos_token_id makes the L-th token the end
token in tidings and transformers; transformers counts it (its sequences
hold it), tidings' `output_tokens` does not. So tidings is credited L tokens
per segment when its `output_tokens` is S * L or S * (L - 1), S its count of
segments (said in the table); any other count is a mismatch, and an error.
"""

import argparse
import glob
import json
import os
import re
import sys


def segments(args):
    text, lens = {}, {}
    for l in open(os.path.join(args.data, "sentences.jsonl"), encoding="utf-8"):
        r = json.loads(l)
        text[r["id"]] = r["text"]
    for l in open(os.path.join(args.data, "pieces.jsonl"), encoding="utf-8"):
        r = json.loads(l)
        lens[r["id"]] = len(r["ids"])
    seen, odd, n_seg, n_in = set(), [], 0, 0
    out = os.path.join(args.results, "tidings-segments.out.jsonl")
    for l in open(out, encoding="utf-8"):
        r = json.loads(l)
        if "error" in r:
            sys.exit(f"compare: tidings failed record {r.get('id')}: {r['error']}")
        seen.add(r["id"])
        m = r["meta"]
        n_seg += m["output_tokens"]
        n_in += m["input_tokens"]
        if m["output_tokens"] != 1 or m["input_tokens"] != lens[r["id"]]:
            odd.append(
                {
                    "id": r["id"],
                    "segments": m["output_tokens"],
                    "input_tokens": m["input_tokens"],
                    "peers_input_tokens": lens[r["id"]],
                    "text": text[r["id"]],
                    "translation": r.get("translations", {}).get("es", {}).get("text"),
                }
            )
    if seen != set(text):
        sys.exit(f"compare: {out} lacks {len(set(text) - seen)} of the {len(text)} records")
    doc = {"sentences": len(seen), "segments": n_seg, "input_tokens": n_in, "odd": odd}
    with open(os.path.join(args.results, "tidings-segments.json"), "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
    print(
        f"tidings: {n_seg} segments for {len(seen)} sentences, {n_in} source tokens "
        f"(peers: {len(seen)}, {sum(lens.values())})",
        file=sys.stderr,
    )
    for o in odd:
        print(
            f"  {o['id']}: {o['segments']} segment(s), {o['input_tokens']} source tokens "
            f"(peers: 1, {o['peers_input_tokens']}): {o['text']}",
            file=sys.stderr,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("segments")
    a.add_argument("--results", required=True)
    a.add_argument("--data", required=True)
    a = sub.add_parser("table")
    a.add_argument("--results", required=True)
    a.add_argument("--plan", required=True)
    a.add_argument("--new-tokens", type=int, default=28)
    args = ap.parse_args()
    if args.cmd == "segments":
        return segments(args)
    L = args.new_tokens
    plan = json.load(open(args.plan))
    n = plan["n"]
    remarks, fatal = [], []

    peers = {}
    path = os.path.join(args.results, "peers.json")
    if os.path.exists(path):
        doc = json.load(open(path))
        if doc["sentences"] != n:
            remarks.append(f"{path} is for {doc['sentences']} sentences, not {n}: ignored")
        else:
            for r in doc["results"]:
                peers[r["name"]] = r
    else:
        remarks.append(f"no {path}: run without --only, or with --only ct2 / hf")

    seg_path = os.path.join(args.results, "tidings-segments.json")
    seg = json.load(open(seg_path)) if os.path.exists(seg_path) else None
    if seg and seg["sentences"] != n:
        seg = None
    n_seg = seg["segments"] if seg else n
    src_tokens = seg["input_tokens"] if seg else plan["source_tokens"]
    if seg and (n_seg != n or seg["odd"]):
        ids = ", ".join(o["id"] for o in seg["odd"])
        remarks.append(
            f"tidings makes {n_seg} segments of the {n} sentences ({src_tokens} source tokens; the peers "
            f"{plan['source_tokens']}): its segmenter cuts {ids} (see {seg_path}). Its tokens/s counts "
            f"all the {n_seg} x {L} tokens it generates."
        )

    rows = []
    for f in sorted(glob.glob(os.path.join(args.results, "tidings-beam*-workers*.json"))):
        if f.endswith(".out.json"):
            continue
        m = re.search(r"tidings-beam(\d+)-workers(\d+)(-[a-z0-9_]+)?\.json$", f)
        beam, workers = int(m.group(1)), int(m.group(2))
        quant = (m.group(3) or "-fp32")[1:]
        t = json.load(open(f))
        secs = t["stages_s"].get("translate:es")
        notes = []
        if secs is None:
            fatal.append(f"{f}: no `translate:es` stage in stages_s ({sorted(t['stages_s'])})")
            continue
        if t.get("articles") != n or t.get("errors", 0) != 0:
            fatal.append(f"{f}: {t.get('articles')} articles ok and {t.get('errors')} errors, expected {n} and 0")
        if t.get("input_tokens") != src_tokens:
            fatal.append(
                f"{f}: input_tokens {t.get('input_tokens')} != {src_tokens}, the source tokens of its "
                f"{n_seg} segments"
            )
        out = t.get("output_tokens", 0)
        what = "N" if n_seg == n else f"{n_seg} segments"
        if out == n_seg * L:
            tokens = out
        elif out == n_seg * (L - 1):
            tokens = n_seg * L
            notes.append(f"output_tokens {out} = {what} x {L - 1} (forced end token not counted): credited x {L}")
        else:
            tokens = out
            fatal.append(f"{f}: output_tokens {out}, expected {n_seg * L} ({what} x {L}): outputs not all {L} long")
            notes.append(f"MISMATCH: output_tokens {out} != {n_seg * L}")
        rows.append(
            {
                "name": f"tidings {quant} beam {beam}, {workers} worker(s)",
                "beam": beam,
                "workers": workers,
                "inputs": n_seg,
                "target_tokens": tokens,
                "output_tokens_reported": out,
                "seconds": secs,
                "tokens_per_s": tokens / secs,
                "notes": notes,
            }
        )

    w = 52
    print(f"\n{'setting':<{w}}{'inputs':>7}{'tokens':>8}{'s':>9}{'tokens/s':>10}")
    for name, r in peers.items():
        print(f"{name:<{w}}{r['sentences']:>7}{r['target_tokens']:>8}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.1f}")
    for r in rows:
        print(f"{r['name']:<{w}}{r['inputs']:>7}{r['target_tokens']:>8}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.1f}")
        for note in r["notes"]:
            print(f"{'':<4}{note}")

    cols = [("ct2 fp32", "ctranslate2 fp32"), ("ct2 int8", "ctranslate2 int8"), ("hf fp32", "transformers fp32")]
    if rows and peers:
        print("\ntidings / peer, target tokens/s; peers in sorted batches of 32 [batch 1 in brackets]")
        print(f"{'tidings setting':<26}" + "".join(f"{c:>20}" for c, _ in cols))
        for r in rows:
            cells = []
            r["ratios"] = {}
            for short, prefix in cols:
                b = peers.get(f"{prefix} beam {r['beam']}, sorted batches of 32")
                one = next((p for k, p in peers.items() if k.startswith(f"{prefix} beam {r['beam']}, batch 1")), None)
                cell = "-"
                if b:
                    cell = f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}"
                    r["ratios"][f"{short}, sorted batches of 32"] = r["tokens_per_s"] / b["tokens_per_s"]
                cell += " [-]" if not one else f" [{r['tokens_per_s'] / one['tokens_per_s']:.2f}]"
                if one:
                    r["ratios"][f"{short}, batch 1"] = r["tokens_per_s"] / one["tokens_per_s"]
                cells.append(cell)
            print(f"{r['name'][8:]:<26}" + "".join(f"{c:>20}" for c in cells))
    p1, p4 = plan["tidings"]["beam1"], plan["tidings"]["beam4"]
    batching = (
        "peers' 'sorted batches of 32': sentences sorted by source length, 32 per batch. tidings: its own "
        "planner (length-sorted, rows x longest x beams <= batch-tokens, at most 64 decoder rows), "
        f"batch-tokens chosen so one worker forms ceil(N/32) batches: beam 1 batch-tokens {p1['batch_tokens']}, "
        f"batch sizes {p1['batch_sizes_one_worker']}; beam 4 batch-tokens {p4['batch_tokens']}, at most 16 "
        f"sentences a batch, sizes {p4['batch_sizes_one_worker']}. With 2 workers each plans its half."
    )
    print(f"\nbatching: {batching}")
    with open(os.path.join(args.results, "comparison.json"), "w") as f:
        json.dump(
            {"sentences": n, "new_tokens": L, "peers": list(peers.values()), "tidings": rows,
             "batching": batching, "remarks": remarks, "problems": fatal},
            f,
            indent=2,
        )
    for r in remarks:
        print(f"\nnote: {r}")
    if fatal:
        print("\nPROBLEMS:", file=sys.stderr)
        for p in fatal:
            print(f"  - {p}", file=sys.stderr)
        sys.exit("compare: tidings did not do the work the peers did (see above)")

if __name__ == "__main__":
    main()
