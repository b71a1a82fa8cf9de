#!/usr/bin/env python3
"""llama.cpp's side of benches/peers/llama.sh, through llama-cpp-python's
low-level API (the C functions, one llama_decode call per step).

For each GGUF model, greedy with the end-of-generation tokens masked (so every
run decodes all its steps):

  prefill   one prompt of exactly --prompt-tokens tokens, in one llama_decode
            call on an empty context: tokens/s;
  decode    --decode-tokens steps of one token after that prompt: tokens/s;
  batch     --sequences sequences, each with its own prompt of the same length
            (the same text after a different first sentence), prefilled one
            by one (not timed), then --decode-tokens steps in which ONE
            llama_decode call takes one token of every sequence: aggregate
            tokens/s = sequences * steps / time.

Every path is warmed up once before it is timed. Before each timed part the
script waits (at most --quiet-wait s) for the 1-minute load average to fall
below --quiet-load, and records the load average it measured under.

The batched run is checked against batch 1: each sequence's first greedy
token must be the one a batch-1 prefill of its prompt gives, llama.cpp's own
counters must show sequences * steps tokens in batches of more than one
token, and each sequence must end at position prompt + steps - 1.
"""
import argparse
import ctypes
import json
import os
import platform
import sys
import time

import numpy as np
import llama_cpp as L

# A made-up news report (written for this benchmark), long enough for a few
# hundred tokens in any of the models' vocabularies.
TEXT = (
    "The regional council voted on Tuesday evening to approve a new plan for the harbour district, "
    "ending nearly two years of public hearings, revised drawings and angry letters to the local paper. "
    "Under the plan, the old grain warehouses along the eastern quay will be turned into homes, a "
    "library and a covered market, while the ferry terminal moves four hundred metres to the south, "
    "closer to the railway station. Supporters say the change will bring life back to a part of the "
    "city that has been half empty since the shipping company left in the nineties. Opponents, many "
    "of them fishermen who still keep their boats in the inner basin, fear that rising rents will "
    "push out the workshops and small businesses that depend on the water. The mayor, speaking to "
    "reporters after the vote, promised that one in three new flats would be rented below the market "
    "price and that the fish auction would stay where it has been for more than a century. "
    "Construction is expected to begin next spring and to last at least five years. The first phase, "
    "which covers the two largest warehouses, is to be paid for by a loan from the national "
    "development bank and by the sale of a car park that the city owns near the cathedral. Engineers "
    "warned during the hearings that parts of the quay wall are older than anyone had thought and "
    "will need repairs before any heavy machinery can be brought in. A survey published last month "
    "found cracks in the foundations of the northern pier, and the council has set aside an extra "
    "twelve million for the work. Local shopkeepers gave the decision a cautious welcome. The owner "
    "of a bakery on the harbour road said that her customers had been asking for years when "
    "something would finally happen, but that she would wait to see the cranes before she believed "
    "it. A group of residents has already announced that it will ask the courts to review the vote, "
    "arguing that the council did not study the effect of the new terminal on traffic in the narrow "
    "streets of the old town. The council's lawyers said they were confident that the plan would "
    "stand. Meanwhile the ferry operator confirmed that timetables will not change before the new "
    "terminal opens, and that passengers can expect shorter walks to the trains once it does."
)

# The first sentence of each batched sequence's prompt; the first is empty, so
# that sequence 0 has the batch-1 prompt.
LEADS = [
    "",
    "Our correspondent sent this report from the coast late last night. ",
    "Here is the latest news from the city, as published this morning. ",
    "Readers asked us to follow this story closely, and we have done so. ",
    "This article was updated after the meeting ended on Tuesday. ",
    "In other news from the region this week, a long debate came to an end. ",
    "The following report is based on the official minutes and interviews. ",
    "A short summary of the week's most discussed local decision follows. ",
]

_keep = []  # ctypes callbacks must outlive the calls into the library


def quiet_logs():
    def log(level, text, _user):  # warnings and errors only
        if level in (3, 4) and text:
            sys.stderr.write("llama.cpp: " + text.decode("utf-8", "replace"))

    cb = L.llama_log_callback(log)
    _keep.append(cb)
    L.llama_log_set(cb, ctypes.c_void_p())


def wait_quiet(what, limit, wait_s):
    """Waits for the 1-minute load average to fall below `limit`; returns
    (load averages, quiet?, seconds waited)."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()
        if load[0] < limit:
            return list(load), True, round(time.monotonic() - t0)
        waited = time.monotonic() - t0
        if waited >= wait_s:
            if wait_s > 0:
                print(f"llama_peer: WARNING: load average still {load[0]:.2f} after {wait_s} s; "
                      f"measuring {what} anyway", file=sys.stderr)
            return list(load), False, round(waited)
        print(f"llama_peer: load average {load[0]:.2f}, waiting for < {limit} before {what}",
              file=sys.stderr, flush=True)
        time.sleep(min(20, wait_s - waited))


def tokenize(vocab, text):
    raw = text.encode("utf-8")
    cap = len(raw) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, cap, True, False)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed ({n})")
    return list(buf[:n])


def prompt_tokens(vocab, lead, n):
    text = lead + TEXT
    toks = tokenize(vocab, text)
    while len(toks) < n:
        text += " " + TEXT
        toks = tokenize(vocab, text)
    return toks[:n]


def round_up(x, m):
    return (x + m - 1) // m * m


class Batch:
    """A llama_batch of at most `cap` tokens, one sequence id each."""

    def __init__(self, cap):
        self.b = L.llama_batch_init(cap, 0, 1)
        self.cap = cap

    def fill(self, tokens, positions, seqs, outputs):
        b = self.b
        assert len(tokens) <= self.cap
        for j, (t, p, s, o) in enumerate(zip(tokens, positions, seqs, outputs)):
            b.token[j] = t
            b.pos[j] = p
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = s
            b.logits[j] = o
        b.n_tokens = len(tokens)
        return b

    def free(self):
        L.llama_batch_free(self.b)


class Model:
    def __init__(self, path, threads, n_prompt, n_decode, kv_unified, mmap=True):
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = mmap
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"cannot load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.eog = np.array([t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)],
                            dtype=np.int64)
        self.eog_set = set(self.eog.tolist())
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.model, buf, len(buf))
        self.desc = buf.value.decode()
        self.n_params = L.llama_model_n_params(self.model)
        self.threads = threads
        self.n_prompt = n_prompt
        self.n_decode = n_decode
        self.kv_unified = kv_unified

    def context(self, n_seq):
        p = L.llama_context_default_params()
        per_seq = round_up(self.n_prompt + self.n_decode + 16, 256)
        p.n_ctx = per_seq * n_seq
        p.n_batch = p.n_ubatch = max(512, round_up(self.n_prompt, 64))
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = self.threads
        p.kv_unified = self.kv_unified
        p.no_perf = False
        ctx = L.llama_init_from_model(self.model, p)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        if L.llama_n_ctx_seq(ctx) < self.n_prompt + self.n_decode:
            raise RuntimeError(f"context per sequence {L.llama_n_ctx_seq(ctx)} is too small")
        info = {"n_ctx": L.llama_n_ctx(ctx), "n_ctx_seq": L.llama_n_ctx_seq(ctx),
                "n_batch": p.n_batch, "n_seq_max": L.llama_n_seq_max(ctx),
                "kv_unified": bool(p.kv_unified), "flash_attn_type": int(p.flash_attn_type)}
        return ctx, info

    def greedy(self, ctx, i):
        """The argmax of output `i`'s logits, end-of-generation tokens masked."""
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,))
        t = int(logits.argmax())
        if t in self.eog_set:
            masked = logits.copy()
            masked[self.eog] = -np.inf
            t = int(masked.argmax())
        return t

    def free(self):
        L.llama_model_free(self.model)


def decode(ctx, batch):
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")
    L.llama_synchronize(ctx)


def clear(ctx):
    L.llama_memory_clear(L.llama_get_memory(ctx), True)


def run_single(m, ctx, batch, prompt, steps):
    """Prefill `prompt` on an empty context, then `steps` one-token steps.
    Returns (prefill seconds, decode seconds, greedy tokens: 1 + steps)."""
    clear(ctx)
    n = len(prompt)
    b = batch.fill(prompt, range(n), [0] * n, [0] * (n - 1) + [1])
    t0 = time.perf_counter()
    decode(ctx, b)
    t1 = time.perf_counter()
    tok = m.greedy(ctx, -1)
    out = [tok]
    t2 = time.perf_counter()
    for k in range(steps):
        decode(ctx, batch.fill([tok], [n + k], [0], [1]))
        tok = m.greedy(ctx, 0)
        out.append(tok)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, out


def run_batched(m, ctx, batch, prompts, steps):
    """Prefill each prompt as its own sequence (not timed), then `steps`
    steps of one llama_decode call holding one token of every sequence."""
    clear(ctx)
    s = len(prompts)
    first = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        n = len(p)
        decode(ctx, batch.fill(p, range(n), [i] * n, [0] * (n - 1) + [1]))
        first.append(m.greedy(ctx, -1))
    prefill_s = time.perf_counter() - t0
    cur = list(first)
    outs = [[t] for t in first]
    n = len(prompts[0])
    L.llama_perf_context_reset(ctx)
    calls = 0
    t1 = time.perf_counter()
    for k in range(steps):
        decode(ctx, batch.fill(cur, [n + k] * s, range(s), [1] * s))
        calls += 1
        for i in range(s):
            cur[i] = m.greedy(ctx, i)
            outs[i].append(cur[i])
    decode_s = time.perf_counter() - t1
    perf = L.llama_perf_context(ctx)
    mem = L.llama_get_memory(ctx)
    last_pos = [L.llama_memory_seq_pos_max(mem, i) for i in range(s)]
    counters = {"decode_calls": calls, "tokens_per_call": s,
                "llama_n_p_eval": perf.n_p_eval, "llama_n_eval": perf.n_eval,
                "llama_t_p_eval_ms": round(perf.t_p_eval_ms, 1),
                "seq_last_pos": last_pos}
    return prefill_s, decode_s, outs, counters


def measure(key, path, a):
    print(f"\n-- llama.cpp {key}: {path}", file=sys.stderr, flush=True)
    t_load = time.perf_counter()
    m = Model(path, a.threads, a.prompt_tokens, a.decode_tokens, a.kv_unified, mmap=not a.no_mmap)
    print(f"llama_peer: {m.desc}, {m.n_params / 1e6:.0f} M parameters, loaded in "
          f"{time.perf_counter() - t_load:.1f} s", file=sys.stderr)
    s = a.sequences
    leads = LEADS + [f"Update number {i} on this story follows here. " for i in range(len(LEADS), s)]
    prompts = [prompt_tokens(m.vocab, leads[i], a.prompt_tokens) for i in range(s)]
    if len({tuple(p) for p in prompts}) != s:
        raise RuntimeError("the sequences' prompts are not all different")
    batch = Batch(max(a.prompt_tokens, s))
    res = {"model": key, "gguf": path, "model_desc": m.desc, "n_params": m.n_params,
           "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens, "sequences": s}

    # Batch 1: warm up, the first greedy token of every prompt (for the
    # check below), then the timed run.
    ctx1, info1 = m.context(1)
    res["context_batch1"] = info1
    run_single(m, ctx1, batch, prompts[0], min(8, a.decode_tokens))
    ref_first = [run_single(m, ctx1, batch, p, 0)[2][0] for p in prompts]
    load, quiet, waited = wait_quiet(f"{key} batch 1", a.quiet_load, a.quiet_wait)
    pre_s, dec_s, single = run_single(m, ctx1, batch, prompts[0], a.decode_tokens)
    res["prefill_tokens_per_s"] = round(a.prompt_tokens / pre_s, 2)
    res["decode_tokens_per_s"] = round(a.decode_tokens / dec_s, 2)
    res["load_avg_batch1"] = load
    res["quiet_batch1"] = quiet
    res["waited_s_batch1"] = waited
    res["load_avg_after_batch1"] = list(os.getloadavg())
    print(f"llama_peer: {key}: prefill {res['prefill_tokens_per_s']:.1f} tokens/s, decode "
          f"{res['decode_tokens_per_s']:.1f} tokens/s (load {load[0]:.2f})", file=sys.stderr, flush=True)
    L.llama_free(ctx1)

    # Batched: warm up, then the timed run.
    ctxs, infos = m.context(s)
    res["context_batch"] = infos
    run_batched(m, ctxs, batch, prompts, min(4, a.decode_tokens))
    load, quiet, waited = wait_quiet(f"{key} batch {s}", a.quiet_load, a.quiet_wait)
    bpre_s, bdec_s, outs, counters = run_batched(m, ctxs, batch, prompts, a.decode_tokens)
    res["batch_decode_tokens_per_s"] = round(s * a.decode_tokens / bdec_s, 2)
    res["batch_prefill_tokens_per_s"] = round(s * a.prompt_tokens / bpre_s, 2)  # one by one
    res["load_avg_batch"] = load
    res["quiet_batch"] = quiet
    res["waited_s_batch"] = waited
    res["load_avg_after_batch"] = list(os.getloadavg())
    L.llama_free(ctxs)

    # Is the batched run what it claims to be?
    first = [o[0] for o in outs]
    same_prefix = next((k for k, (x, y) in enumerate(zip(outs[0], single)) if x != y), len(single))
    want_pos = a.prompt_tokens + a.decode_tokens - 1
    check = {
        "step0_tokens_batch": first,
        "step0_tokens_batch1": ref_first,
        "step0_matches": first == ref_first,
        "seq0_tokens_equal_to_batch1": same_prefix,
        "of_tokens": len(single),
        "distinct_sequences": len({tuple(o) for o in outs}),
        # llama_perf_context reports max(1, n_eval): 1 means no single-token call.
        "all_steps_batched": counters["llama_n_p_eval"] == s * a.decode_tokens
        and counters["llama_n_eval"] <= 1 and all(p == want_pos for p in counters["seq_last_pos"]),
        **counters,
    }
    res["batch_check"] = check
    ok = check["step0_matches"] and check["all_steps_batched"]
    print(f"llama_peer: {key}: batch {s}: {res['batch_decode_tokens_per_s']:.1f} tokens/s in all "
          f"(load {load[0]:.2f}); {counters['decode_calls']} llama_decode calls of {s} tokens, llama.cpp "
          f"counted {counters['llama_n_p_eval']} batched + {counters['llama_n_eval']} single tokens; "
          f"step-0 tokens {'match' if check['step0_matches'] else 'DO NOT match'} batch 1; sequence 0 "
          f"equals batch 1 for {same_prefix}/{len(single)} tokens", file=sys.stderr, flush=True)
    if not ok:
        print(f"llama_peer: WARNING: {key}: the batched run failed its check: {check}", file=sys.stderr)
    batch.free()
    m.free()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="KEY=GGUF",
                    help="a model to measure (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--kv-unified", action="store_true",
                    help="one KV buffer for all sequences (default: one stream per sequence, "
                         "llama.cpp's advice for sequences that share no prefix)")
    ap.add_argument("--no-mmap", action="store_true",
                    help="read the weights into memory llama.cpp allocates instead of mapping the "
                         "file (with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 that memory is on huge "
                         "pages, as tidings' is)")
    ap.add_argument("--quiet-load", type=float, default=0.8)
    ap.add_argument("--quiet-wait", type=int, default=600, help="0: do not wait")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    models = []
    for spec in a.model:
        key, sep, path = spec.partition("=")
        if not sep or not os.path.isfile(path):
            ap.error(f"--model {spec}: want KEY=PATH to a GGUF file")
        models.append((key, path))

    quiet_logs()
    L.llama_backend_init()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    out = {"tool": "llama.cpp", "version": L.__version__, "threads": a.threads,
           "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens, "sequences": a.sequences,
           "kv_unified": a.kv_unified, "use_mmap": not a.no_mmap,
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "cpu": cpu, "cores": os.cpu_count(),
           "system_info": L.llama_print_system_info().decode().strip(),
           "quiet_load": a.quiet_load, "results": []}
    # Keep an earlier run's results for the models not measured now, when it
    # measured the same thing.
    same = ("threads", "prompt_tokens", "decode_tokens", "sequences", "kv_unified", "version",
            "use_mmap", "glibc_tunables")
    if os.path.exists(a.json):
        try:
            old = json.load(open(a.json))
        except ValueError:
            old = {}
        if all(old.get(k) == out[k] for k in same):
            now = {k for k, _ in models}
            out["results"] = [r for r in old.get("results", []) if r.get("model") not in now]
    for key, path in models:
        out["results"].append(measure(key, path, a))
        out["results"].sort(key=lambda r: r["model"])
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, a.json)

    print(f"\nllama.cpp {L.__version__}, {a.threads} threads, prompt {a.prompt_tokens}, "
          f"{a.decode_tokens} decode steps, {a.sequences} sequences (tokens/s; load = 1-min average)")
    print(f"{'model':10} {'prefill':>9} {'decode':>9} {'batch':>9} {'load b1':>8} {'load b':>8}  check")
    for r in out["results"]:
        c = r["batch_check"]
        print(f"{r['model']:10} {r['prefill_tokens_per_s']:9.1f} {r['decode_tokens_per_s']:9.1f} "
              f"{r['batch_decode_tokens_per_s']:9.1f} {r['load_avg_batch1'][0]:8.2f} "
              f"{r['load_avg_batch'][0]:8.2f}  "
              f"{'ok' if c['step0_matches'] and c['all_steps_batched'] else 'FAILED'}")
    print(f"results: {a.json}")


if __name__ == "__main__":
    main()
