#!/usr/bin/env bash
# Side-by-side decoder speed: tidings against llama.cpp (llama-cpp-python,
# built from source for this CPU) on the same GGUF files, the ones tidings
# fetches for its packaged models: SmolLM2-135M-Instruct (Q4_1),
# Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct (Q4_K_M), and on request
# Gemma 3 270M (Q4_K_M; `--models gemma3`, no job of the repository uses
# this base model, so it is not in the default set). Greedy, EOS
# ignored, 2 threads. For each model: prefill tokens/s of one prompt, decode
# tokens/s at batch 1, and the aggregate decode tokens/s of several sequences
# decoded together (one llama_decode call of one token per sequence a step).
#
#   benches/peers/llama.sh [--models smollm2,qwen0.5b,qwen1.5b] [--threads 2]
#       [--prompt-tokens 200] [--decode-tokens 128] [--sequences 8]
#       [--only llama|tidings] [--huge-pages] [--setup] [--no-wait]
#
#   --models LIST       comma-separated, from smollm2, qwen0.5b, qwen1.5b,
#                       gemma3 (default smollm2,qwen0.5b,qwen1.5b)
#   --threads N         math threads for both tools (default 2)
#   --prompt-tokens N   prompt length, in the model's own tokens (default 200)
#   --decode-tokens N   decode steps timed (default 128)
#   --sequences N       sequences in the batched decode (default 8)
#   --only X            run only llama.cpp (llama) or only tidings; the ratios
#                       use whatever results the other left before
#   --huge-pages        measure both tools a second time with their weights
#                       on transparent huge pages: tidings with
#                       TIDINGS_HUGE_PAGES=1 (src/huge_pages.rs), llama.cpp
#                       with the weights read into memory instead of mapped
#                       from the file (use_mmap off) and
#                       GLIBC_TUNABLES=glibc.malloc.hugetlb=1; results in
#                       llama-huge-pages.json and tidings-MODEL-huge-pages.json,
#                       with their own ratios
#   --setup             only make the venv and fetch the models, measure nothing
#   --no-wait           do not wait for a quiet machine before each measurement
#
# tidings must be built (target/release/tidings; this script does not build
# it). Its side needs `tidings bench --raw-only`; with a tidings that lacks
# it, that side is skipped with a message.
#
# Everything goes under ${TIDINGS_CACHE:-~/.cache/tidings}:
#   llama-venv/              Python venv with the pinned llama-cpp-python
#   peers/jobs/llama-*.toml  the tidings job configs (one model each)
#   peers/llama/             llama.json (llama.cpp), tidings-MODEL.json and
#                            the logs
# The GGUF files stay where tidings caches its models.
#
# Environment: PYTHON (the interpreter that makes the venv; default python3),
# QUIET_LOAD (the 1-minute load average below which a measurement starts;
# default 0.8), QUIET_WAIT (the longest wait for that, in seconds; default
# 600: after it the measurement runs anyway and its JSON says so).
set -Eeuo pipefail
trap 'echo "peers/llama.sh: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${TIDINGS_CACHE:-$HOME/.cache/tidings}
PEERS=$CACHE/peers
VENV=$CACHE/llama-venv
RESULTS=$PEERS/llama
BIN=$ROOT/target/release/tidings
MODELS=smollm2,qwen0.5b,qwen1.5b
THREADS=2
PROMPT_TOKENS=200
DECODE_TOKENS=128
SEQUENCES=8
ONLY=""
SETUP=0
WAIT=1
HUGE=0
QUIET_LOAD=${QUIET_LOAD:-0.8}
QUIET_WAIT=${QUIET_WAIT:-600}

die() { echo "peers/llama.sh: $*" >&2; exit 1; }
step() { echo; echo "== $*" >&2; }
number() { case "$2" in ''|*[!0-9]*|0) die "$1 takes a positive number, not '$2'" ;; esac; }

while [ $# -gt 0 ]; do
    case "$1" in
        --models|--threads|--prompt-tokens|--decode-tokens|--sequences|--only)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)"
            case "$1" in
                --models) MODELS=$2 ;;
                --threads) THREADS=$2 ;;
                --prompt-tokens) PROMPT_TOKENS=$2 ;;
                --decode-tokens) DECODE_TOKENS=$2 ;;
                --sequences) SEQUENCES=$2 ;;
                --only) ONLY=$2 ;;
            esac
            shift ;;
        --models=*) MODELS=${1#*=} ;;
        --threads=*) THREADS=${1#*=} ;;
        --prompt-tokens=*) PROMPT_TOKENS=${1#*=} ;;
        --decode-tokens=*) DECODE_TOKENS=${1#*=} ;;
        --sequences=*) SEQUENCES=${1#*=} ;;
        --only=*) ONLY=${1#*=} ;;
        --setup) SETUP=1 ;;
        --huge-pages) HUGE=1 ;;
        --no-wait) WAIT=0 ;;
        -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
number --threads "$THREADS"
number --prompt-tokens "$PROMPT_TOKENS"
number --decode-tokens "$DECODE_TOKENS"
number --sequences "$SEQUENCES"
case "$ONLY" in ""|llama|tidings) ;; *) die "--only takes llama or tidings, not '$ONLY'" ;; esac
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
awk -v l="$QUIET_LOAD" 'BEGIN { exit !(l + 0 > 0) }' || die "QUIET_LOAD must be a positive number"
number QUIET_WAIT "$QUIET_WAIT"

# The models: key, packaged name, the config of the repository that uses it.
pkg_of() {
    case "$1" in
        smollm2) echo smollm2-135m-instruct ;;
        qwen0.5b) echo qwen2.5-coder-0.5b-instruct ;;
        qwen1.5b) echo qwen2.5-coder-1.5b-instruct ;;
        gemma3) echo gemma3-270m ;;
        *) return 1 ;;
    esac
}
config_of() {
    case "$1" in
        smollm2) echo configs/smollm2.toml ;;
        qwen0.5b) echo configs/demo-small.toml ;;
        qwen1.5b) echo configs/demo.toml ;;
        gemma3) ;;
    esac
}
IFS=, read -r -a KEYS <<< "$MODELS"
[ "${#KEYS[@]}" -gt 0 ] || die "--models is empty"
for key in "${KEYS[@]}"; do
    pkg_of "$key" > /dev/null || die "unknown model '$key' in --models (known: smollm2, qwen0.5b, qwen1.5b, gemma3)"
    # The job configs below must name the model these configs use.
    [ -z "$(config_of "$key")" ] || grep -q "source = \"pkg:$(pkg_of "$key")\"" "$ROOT/$(config_of "$key")" \
        || die "$(config_of "$key") no longer uses pkg:$(pkg_of "$key"); update this script"
done

mkdir -p "$PEERS/jobs" "$RESULTS"
T0=$SECONDS
read -r LOAD1 _ < /proc/loadavg || LOAD1=0
if awk -v l="$LOAD1" -v q="$QUIET_LOAD" 'BEGIN { exit !(l > q) }'; then
    echo "peers/llama.sh: WARNING: load average $LOAD1 before starting; the machine is not quiet," \
        "so the timings will be off unless it calms down (each measurement waits up to" \
        "${QUIET_WAIT} s for a load average below $QUIET_LOAD$([ "$WAIT" = 1 ] || echo '; not with --no-wait'))" >&2
fi

# wait_quiet WHAT: wait (at most QUIET_WAIT s) for the 1-minute load average
# to fall below QUIET_LOAD.
wait_quiet() {
    [ "$WAIT" = 1 ] || return 0
    local start=$SECONDS l
    while :; do
        read -r l _ < /proc/loadavg
        if awk -v l="$l" -v q="$QUIET_LOAD" 'BEGIN { exit !(l < q) }'; then return 0; fi
        if [ $((SECONDS - start)) -ge "$QUIET_WAIT" ]; then
            echo "peers/llama.sh: WARNING: load average still $l after $QUIET_WAIT s; measuring $1 anyway" >&2
            return 0
        fi
        echo "peers/llama.sh: load average $l, waiting for < $QUIET_LOAD before $1" >&2
        sleep 20
    done
}

# --- llama-cpp-python, pinned and built for this CPU. ------------------------
# No wheel on the registry fits a plain Linux CPU, so pip builds the sdist
# (some minutes on 2 cores). cmake and ninja come from the registry into the
# venv where the system lacks them.
PINS="llama-cpp-python==0.3.36 numpy"
# -march=native, less AMX: a CPU may list AMX while its kernel (a VM's, here
# one that does not offer the tile state, arch_prctl ARCH_GET_XCOMP_SUPP)
# does not let processes use it, and ggml's AMX kernels then crash in the
# first matmul. GCC honours -mno-* whatever their place beside -march.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CPU=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
PY=$VENV/bin/python
if want llama && { [ ! -f "$VENV/.pins" ] || [ "$(cat "$VENV/.pins")" != "$PINS $LLAMA_CMAKE_ARGS" ]; }; then
    step "installing $PINS into $VENV (once; builds llama.cpp for this CPU, minutes)"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    tools=()
    command -v cmake > /dev/null || tools+=(cmake)
    command -v ninja > /dev/null || tools+=(ninja)
    if [ "${#tools[@]}" -gt 0 ]; then "$PY" -m pip install --quiet "${tools[@]}"; fi
    command -v c++ > /dev/null || command -v g++ > /dev/null || die "no C++ compiler (apt-get install g++)"
    t=$SECONDS
    # The venv's bin first on PATH, so that the build finds its ninja (pip's
    # isolated build environment may bring a cmake of its own).
    PATH=$VENV/bin:$PATH CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        nice -n 19 "$PY" -m pip install --no-cache-dir --verbose $PINS > "$VENV/install.log" 2>&1 \
        || { tail -n 40 "$VENV/install.log" >&2; die "pip install $PINS failed (log: $VENV/install.log)"; }
    echo "peers/llama.sh: llama-cpp-python built and installed in $((SECONDS - t)) s" >&2
    echo "$PINS $LLAMA_CMAKE_ARGS" > "$VENV/.pins"
fi
if want llama; then
    "$PY" -c 'import sys, llama_cpp; print(f"peers: llama-cpp-python {llama_cpp.__version__}", file=sys.stderr)'
fi

# --- The models, through tidings. ---------------------------------------------
# write_job FILE KEY: a job with just the model, 1 worker of THREADS threads.
write_job() {
    cat > "$1" <<EOF
# Written by benches/peers/llama.sh: tidings against llama.cpp on
# pkg:$(pkg_of "$2")$([ -z "$(config_of "$2")" ] || echo " (the model of $(config_of "$2"))").
[input]
path = "$ROOT/examples/articles.jsonl"

[output]
path = "$RESULTS/tidings-$2.out.jsonl"

[translate]
targets = ["es"]
fields = ["title"]
models = { es = "llm" }

[models.llm]
source = "pkg:$(pkg_of "$2")"

[generation]
max-new-tokens = $DECODE_TOKENS

[runtime]
device = "cpu"
threads = $THREADS
workers = 1
EOF
}

[ -x "$BIN" ] || die "no $BIN: build tidings first (cargo build --release); it fetches the models"
if [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" -print -quit)" ]; then
    echo "peers/llama.sh: WARNING: $BIN is older than the sources; run cargo build --release" \
        "to measure the current tidings" >&2
fi
declare -A GGUF
for key in "${KEYS[@]}"; do
    job=$PEERS/jobs/llama-$key.toml
    write_job "$job" "$key"
    step "fetching pkg:$(pkg_of "$key") with tidings (once; the 1.5B model is 1.1 GB)"
    "$BIN" models fetch --config "$job" >&2
    # `models list`: NAME <tab> SOURCE <tab> used|unused <tab> available at PATH
    path=$("$BIN" models list --config "$job" \
        | awk -F'\t' -v s="pkg:$(pkg_of "$key")" '$2 == s && $4 ~ /^available at / { sub(/^available at /, "", $4); print $4 }')
    [ -n "$path" ] && [ -f "$path" ] || die "tidings did not say where pkg:$(pkg_of "$key") is (tidings models list --config $job)"
    echo "peers/llama.sh: $key: $path" >&2
    GGUF[$key]=$path
done
[ "$SETUP" = 0 ] || { echo "peers/llama.sh: set up in $((SECONDS - T0)) s" >&2; exit 0; }

# --- llama.cpp. -----------------------------------------------------------------
if want llama; then
    args=()
    for key in "${KEYS[@]}"; do args+=(--model "$key=${GGUF[$key]}"); done
    wait_args=(--quiet-load "$QUIET_LOAD" --quiet-wait "$QUIET_WAIT")
    [ "$WAIT" = 1 ] || wait_args=(--quiet-wait 0)
    step "llama.cpp: $THREADS threads, $PROMPT_TOKENS prompt tokens, $DECODE_TOKENS decode steps," \
        "$SEQUENCES sequences batched"
    OMP_NUM_THREADS=$THREADS "$PY" "$HERE/llama_peer.py" "${args[@]}" "${wait_args[@]}" \
        --threads "$THREADS" --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
        --sequences "$SEQUENCES" --json "$RESULTS/llama.json"
    if [ "$HUGE" = 1 ]; then
        step "llama.cpp again, its weights read into memory on huge pages (use_mmap off," \
            "GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
        GLIBC_TUNABLES=glibc.malloc.hugetlb=1 OMP_NUM_THREADS=$THREADS "$PY" "$HERE/llama_peer.py" \
            "${args[@]}" "${wait_args[@]}" --no-mmap \
            --threads "$THREADS" --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
            --sequences "$SEQUENCES" --json "$RESULTS/llama-huge-pages.json"
    fi
fi

# --- tidings. -------------------------------------------------------------------
if want tidings; then
    if ! "$BIN" bench --help 2>/dev/null | grep -q -- '--raw-only'; then
        step "tidings: SKIPPED: this tidings has no \`bench --raw-only\` (see $BIN bench --help)"
    else
        modes=("")
        if [ "$HUGE" = 1 ]; then modes+=(-huge-pages); fi
        for mode in "${modes[@]}"; do
        for key in "${KEYS[@]}"; do
            job=$PEERS/jobs/llama-$key.toml
            hp=0
            if [ -n "$mode" ]; then hp=1; fi
            wait_quiet "tidings $key$mode"
            step "tidings $key$mode: $job (TIDINGS_HUGE_PAGES=$hp)"
            "$BIN" validate --config "$job" >&2
            TIDINGS_HUGE_PAGES=$hp "$BIN" bench --config "$job" --raw-only \
                --prompt-tokens "$PROMPT_TOKENS" --decode-tokens "$DECODE_TOKENS" \
                --sequences "$SEQUENCES" --json "$RESULTS/tidings-$key$mode.json" \
                2> "$RESULTS/tidings-$key$mode.log" \
                || { cat "$RESULTS/tidings-$key$mode.log" >&2; die "tidings bench failed ($job)"; }
            cat "$RESULTS/tidings-$key$mode.log" >&2
            read -r l1 l5 l15 _ < /proc/loadavg
            echo "peers/llama.sh: load average after tidings $key$mode: $l1 $l5 $l15" >&2
        done
        done
    fi
fi

# --- The ratios. ------------------------------------------------------------------
step "tidings / llama.cpp ($THREADS threads; results in $RESULTS)"
python3 - "$RESULTS" "${KEYS[@]}" <<'EOF'
import json, os, sys, time
d, keys = sys.argv[1], sys.argv[2:]
def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None
def ratio(a, b):
    return f"{a / b:9.2f}" if a and b else f"{'-':>9}"
def num(x):
    return f"{x:9.1f}" if x else f"{'-':>9}"
def raw(name):
    t = load(name)
    r = (t or {}).get("raw") or []
    return (r[0] if r else {}), (t or {}).get("huge_pages"), (t or {}).get("memory_read")
def share(x, ceiling):
    return f"{100 * x / ceiling:8.0f}%" if x and ceiling else f"{'-':>9}"
# (label, llama.cpp results, tidings results file suffix)
pairs = [("defaults", "llama.json", ""), ("huge pages", "llama-huge-pages.json", "-huge-pages")]
tables = []
for label, lfile, suffix in pairs:
    llama = load(lfile)
    ll = {r["model"]: r for r in (llama or {}).get("results", [])}
    rows = []
    for k in keys:
        t, hp, mem = raw(f"tidings-{k}{suffix}.json")
        l = ll.get(k, {})
        if not t and not l:
            continue
        for what in ("prompt_tokens", "decode_tokens", "sequences"):
            if t and l and t.get(what) != l.get(what):
                print(f"{k}: WARNING: {what} differs: tidings {t.get(what)}, llama.cpp {l.get(what)}")
        rows.append((k, t, hp, l, mem))
    if rows:
        tables.append((label, llama, rows))
def measured(name):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(p)))
for label, llama, rows in tables:
    lfile, suffix = next((l, s) for lab, l, s in pairs if lab == label)
    print(f"-- {label} (results written: llama.cpp {measured(lfile)}, tidings "
          + ", ".join(f"{k} {measured(f'tidings-{k}{suffix}.json')}" for k, _, _, _, _ in rows) + ")")
    print(f"{'tokens/s':10} {'':>9} {'prefill':>9} {'decode':>9} {'batch':>9}")
    for k, t, hp, l, _ in rows:
        for tool, r in (("tidings", t), ("llama.cpp", l)):
            print(f"{k:10} {tool:>9} {num(r.get('prefill_tokens_per_s'))} {num(r.get('decode_tokens_per_s'))}"
                  f" {num(r.get('batch_decode_tokens_per_s'))}")
    print()
    print(f"{'ratios':10} {'prefill':>9} {'decode':>9} {'batch':>9} {'t.batch/1':>9}")
    print(f"{'':10} {'t/l':>9} {'t/l':>9} {'t/l':>9} {'':>9}")
    for k, t, hp, l, _ in rows:
        print(f"{k:10} {ratio(t.get('prefill_tokens_per_s'), l.get('prefill_tokens_per_s'))}"
              f" {ratio(t.get('decode_tokens_per_s'), l.get('decode_tokens_per_s'))}"
              f" {ratio(t.get('batch_decode_tokens_per_s'), l.get('batch_decode_tokens_per_s'))}"
              f" {ratio(t.get('batch_decode_tokens_per_s'), t.get('decode_tokens_per_s'))}")
    print("tidings' weights on huge pages: " + ", ".join(
        f"{k} {'yes' if hp else 'no' if hp is False else '?'}" for k, _, hp, _, _ in rows))
    # One-sequence decode against the memory ceiling: the read bandwidth
    # tidings measured (after its own measurement) over the bytes of
    # weights a step reads. llama.cpp ran at another time: the VM drifts.
    if any(t.get("decode_memory_ceiling_tokens_per_s") for _, t, _, _, _ in rows):
        print()
        print(f"{'decode/ceiling':14} {'GB/step':>8} {'GB/s':>8} {'ceiling':>9} {'tidings':>9} {'llama.cpp':>9}")
        for k, t, hp, l, mem in rows:
            c = t.get("decode_memory_ceiling_tokens_per_s")
            gb = (t.get("step_weight_bytes") or 0) / 1e9
            bw = (mem or {}).get("gb_per_s")
            print(f"{k:14} {gb:8.2f} {bw or 0:8.1f} {num(c)} {share(t.get('decode_tokens_per_s'), c)}"
                  f" {share(l.get('decode_tokens_per_s'), c)}")
    if llama:
        print(f"llama.cpp: llama-cpp-python {llama.get('version')}, {llama.get('threads')} threads, "
              f"mmap {'on' if llama.get('use_mmap', True) else 'off'}, "
              f"GLIBC_TUNABLES '{llama.get('glibc_tunables', '')}'")
    print()
print("t/l: tidings / llama.cpp (above 1: tidings is faster); t.batch/1: tidings' batched"
      " aggregate / its batch-1 decode; decode/ceiling: batch-1 decode tokens/s as a share of"
      " the most the read bandwidth allows (GB/s measured by tidings bench, over the GB of"
      " weights a step reads); '-': no result")
EOF
echo "peers/llama.sh: done in $((SECONDS - T0)) s" >&2
