#!/usr/bin/env bash
# The GPU benchmark, run from a bundle that scripts/build-cuda.sh packed (it
# copies this script into the bundle). Needs only the NVIDIA driver: no Rust
# toolchain, no CUDA toolkit, no network. Each job of the bundle's jobs/ runs
# as `tidings bench` on the GPU (device = "cuda", as written), then the same
# on the CPU of the same machine, for a ratio measured in the same run.
#
#   gpu-bench.sh [--out DIR] [--articles N] [--jobs "NAME ..."] [--cpu-only] [--no-cpu]
#                [--budget SECONDS] [--pack FILE]
#
#   --out DIR       where results go (default $OUT if set, else results/ in the bundle)
#   --articles N    the first N articles of the input per run (default 16)
#   --jobs "A B"    only these jobs (names of jobs/*.toml without .toml);
#                   default all, smallest first
#   --cpu-only      skip the GPU runs (the CPU half alone, e.g. on a machine without one)
#   --no-cpu        skip the CPU baseline
#   --budget S      start no run after S seconds (the runs left are reported as
#                   skipped); for a machine lent for a few minutes
#   --pack FILE     also write every result file into one .tar.gz
#
# A slim bundle (build-cuda.sh --slim) is completed here first: bin/tidings.xz
# is unpacked, each model of skeletons/ is filled with seeded random weights
# into models/ (scripts/random_weights.py; needs python3), and where the
# bundle has no lib/, the CUDA 13 libraries the binary needs are looked for in
# $CUDA_HOME, /usr/local/cuda and Python's nvidia packages (PyTorch's).
#
# Results: nvidia-smi.txt, host.txt, JOB.cuda.json / JOB.cpu.json (the
# `tidings bench --json` reports), JOB.DEVICE.log (its table and log), and
# summary.tsv (articles/min on each device and their ratio, generated tokens/s,
# raw single-sequence decode tokens/s).
#
# Exit status: 0 when every run passed; 3 when the CUDA device cannot be
# opened (no GPU, no driver, or a driver too old for CUDA 13.0); 1 otherwise.
#
# Environment:
#   TIDINGS_BUNDLE   the bundle folder (default: this script's folder)
#   TIDINGS_BIN      the cuda-built binary (default bin/tidings of the bundle)
#   TIDINGS_CPU_BIN  the binary for the CPU baseline (default TIDINGS_BIN; any
#                    tidings build works, a CPU-only one too)
#   TIDINGS_CACHE    the packaged-model cache (default models/ of the bundle)
#   CPU_THREADS      math threads of the CPU runs (default: all cores)
#   RUN_TIMEOUT      seconds one run may take before it is stopped (default 300)
#   ARTICLES, JOBS   as --articles and --jobs
set -Euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUNDLE=${TIDINGS_BUNDLE:-$HERE}
RESULTS=${OUT:-}
ARTICLES=${ARTICLES:-16}
JOBS=${JOBS:-}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
BUDGET=""
PACK=""
GPU=1
CPU=1

die() { code=$1; shift; echo "gpu-bench.sh: $*" >&2; exit "$code"; }
step() { echo; echo "== $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die 1 "--out needs a folder"; RESULTS=$2; shift ;;
        --out=*) RESULTS=${1#--out=} ;;
        --articles) [ $# -ge 2 ] || die 1 "--articles needs a number"; ARTICLES=$2; shift ;;
        --articles=*) ARTICLES=${1#--articles=} ;;
        --jobs) [ $# -ge 2 ] || die 1 "--jobs needs job names"; JOBS=$2; shift ;;
        --jobs=*) JOBS=${1#--jobs=} ;;
        --budget) [ $# -ge 2 ] || die 1 "--budget needs seconds"; BUDGET=$2; shift ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        --pack) [ $# -ge 2 ] || die 1 "--pack needs a file"; PACK=$2; shift ;;
        --pack=*) PACK=${1#--pack=} ;;
        --cpu-only) GPU=0 ;;
        --no-cpu) CPU=0 ;;
        -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d'; exit 0 ;;
        *) die 1 "unknown option $1 (see --help)" ;;
    esac
    shift
done
case "$ARTICLES" in ''|*[!0-9]*|0) die 1 "--articles takes a positive number, not '$ARTICLES'" ;; esac
case "$BUDGET" in ''|*[!0-9]*) [ -z "$BUDGET" ] || die 1 "--budget takes whole seconds, not '$BUDGET'" ;; esac
[ "$GPU" = 1 ] || [ "$CPU" = 1 ] || die 1 "--cpu-only and --no-cpu together leave nothing to run"
[ -d "$BUNDLE/jobs" ] || die 1 "no jobs/ in $BUNDLE: run this from a bundle that scripts/build-cuda.sh packed (or set TIDINGS_BUNDLE)"

BIN=${TIDINGS_BIN:-$BUNDLE/bin/tidings}
CPU_BIN=${TIDINGS_CPU_BIN:-$BIN}
RESULTS=${RESULTS:-$BUNDLE/results}
mkdir -p "$RESULTS" || die 1 "cannot make the results folder $RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
CPU_THREADS=${CPU_THREADS:-$(nproc)}
export LD_LIBRARY_PATH=$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export HF_HUB_OFFLINE=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- A slim bundle: the binary, the models, the libraries. ---------------------
if [ -z "${TIDINGS_BIN:-}" ] && [ ! -x "$BIN" ] && [ -f "$BUNDLE/bin/tidings.xz" ]; then
    step "unpacking bin/tidings.xz"
    if command -v xz > /dev/null; then
        xz -dc "$BUNDLE/bin/tidings.xz" > "$BIN.partial"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$BUNDLE/bin/tidings.xz" "$BIN.partial"
    fi || die 1 "cannot unpack $BUNDLE/bin/tidings.xz"
    chmod +x "$BIN.partial" && mv "$BIN.partial" "$BIN"
fi
RANDOM_MODELS=""
if [ -z "${TIDINGS_CACHE:-}" ] && [ -d "$BUNDLE/skeletons" ]; then
    step "random weights into models/ from skeletons/"
    command -v python3 > /dev/null || die 1 "a slim bundle needs python3 to fill its models (random_weights.py)"
    for sk in "$BUNDLE"/skeletons/*/; do
        name=$(basename "$sk")
        dst=$BUNDLE/models/$name
        [ -f "$dst/.filled" ] && continue
        rm -rf "$dst" "$dst.partial"
        t=$SECONDS
        python3 "$BUNDLE/random_weights.py" fill "$sk" "$dst.partial" --seed 0 \
            || die 1 "filling $name from its skeleton failed"
        touch "$dst.partial/.filled" && mv "$dst.partial" "$dst"
        echo "gpu-bench.sh: $name filled in $((SECONDS - t)) s" >&2
    done
    RANDOM_MODELS="random weights (seed 0) of the real models' shapes, types and tokenizers, from skeletons/"
fi
if [ -z "${TIDINGS_CACHE:-}" ] && [ -d "$BUNDLE/models" ]; then export TIDINGS_CACHE=$BUNDLE/models; fi
if [ ! -d "$BUNDLE/lib" ] && [ -x "$BIN" ] && { [ "$GPU" = 1 ] || [ "$CPU_BIN" = "$BIN" ]; }; then
    # The folders that may hold CUDA 13 libraries, most specific first.
    lib_dirs() {
        local d
        for d in ${CUDA_HOME:+"$CUDA_HOME/lib64" "$CUDA_HOME/lib"} /usr/local/cuda/lib64 \
            /usr/local/cuda/targets/x86_64-linux/lib; do
            [ -d "$d" ] && echo "$d"
        done
        command -v python3 > /dev/null && python3 -c '
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        print(d)' 2> /dev/null
        return 0
    }
    # What the binary lacks, apart from the driver's libcuda.
    missing() { ldd "$BIN" 2> /dev/null | awk '/not found/ {print $1}' | grep -v '^libcuda\.so' || true; }
    dirs=$(lib_dirs)
    for _ in 1 2 3 4; do
        lack=$(missing)
        [ -n "$lack" ] || break
        added=0
        for lib in $lack; do
            for d in $dirs; do
                if [ -e "$d/$lib" ]; then
                    case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *)
                        export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; added=1 ;;
                    esac
                    break
                fi
            done
        done
        [ "$added" = 1 ] || break
    done
    lack=$(missing)
    [ -z "$lack" ] || die 1 "the bundle has no lib/ and these CUDA libraries were found nowhere (looked in: $(echo $dirs)): $(echo $lack). Set CUDA_HOME or LD_LIBRARY_PATH."
fi

# --- The machine. ----------------------------------------------------------------
step "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -n) $(uname -r)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"
    echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "bundle: $BUNDLE"
    [ -f "$BUNDLE/MANIFEST.txt" ] && sed -n '1,3p' "$BUNDLE/MANIFEST.txt"
    if [ -n "$RANDOM_MODELS" ]; then
        echo "models: $RANDOM_MODELS"
    else
        echo "models: ${TIDINGS_CACHE:-default cache}"
    fi
    echo "articles per run: $ARTICLES; CPU threads: $CPU_THREADS"
    echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
} | tee "$RESULTS/host.txt" >&2
if [ "$GPU" = 1 ]; then
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi 2>&1 | tee "$RESULTS/nvidia-smi.txt" >&2 || true
    else
        echo "gpu-bench.sh: no nvidia-smi on PATH" | tee "$RESULTS/nvidia-smi.txt" >&2
    fi
fi

# A binary linked against libcuda does not start where the driver is missing:
# say so plainly instead of the loader's message alone.
check_starts() { # BIN WHAT
    [ -x "$1" ] || die 1 "no $2 binary at $1"
    if ! msg=$("$1" --version 2>&1); then
        echo "$msg" >&2
        case "$msg" in
            *libcuda.so*) die 3 "CUDA: the NVIDIA driver library libcuda.so.1 is not on this machine, so the cuda build of tidings cannot start (no GPU driver installed?). Use --cpu-only with a CPU build (TIDINGS_CPU_BIN) for the CPU half." ;;
            *"error while loading shared libraries"*) die 1 "a library of $1 is missing (the bundle's lib/ is $BUNDLE/lib): see above" ;;
            *) die 1 "$1 --version failed: see above" ;;
        esac
    fi
    echo "$2 binary: $1 ($msg)" | tee -a "$RESULTS/host.txt" >&2
}
[ "$GPU" = 0 ] || check_starts "$BIN" cuda
[ "$CPU" = 0 ] || check_starts "$CPU_BIN" CPU

# --- The jobs. ---------------------------------------------------------------------
if [ -z "$JOBS" ]; then
    for j in smollm2 qwen0_5b qwen1_5b marian-random-beam1 marian-random-beam4; do
        [ -f "$BUNDLE/jobs/$j.toml" ] && JOBS="$JOBS $j"
    done
    for f in "$BUNDLE"/jobs/*.toml; do
        j=$(basename "$f" .toml)
        case " $JOBS " in *" $j "*) ;; *) JOBS="$JOBS $j" ;; esac
    done
fi
for j in $JOBS; do [ -f "$BUNDLE/jobs/$j.toml" ] || die 1 "no job $j ($BUNDLE/jobs/$j.toml)"; done

# variant JOB DEVICE: writes $WORK/JOB.DEVICE.toml, the job with its paths
# made absolute (tidings reads them relative to the config's folder, which is
# now $WORK) and the device set.
variant() {
    local src=$BUNDLE/jobs/$1.toml
    grep -q '^device = "cuda"' "$src" || die 1 "$src has no line 'device = \"cuda\"' in [runtime] to switch"
    sed -e "s#^path = \"\\.\\./#path = \"$BUNDLE/#" \
        -e "s#\"path:\\.\\./#\"path:$BUNDLE/#" \
        -e "s#^device = \"cuda\"#device = \"$2\"#" "$src" > "$WORK/$1.$2.toml"
}

FAILED=0
SKIPPED=0
START=$SECONDS
# bench JOB DEVICE BIN EXTRA_ARGS...
bench() {
    local job=$1 dev=$2 bin=$3; shift 3
    local cfg=$WORK/$job.$dev.toml log=$RESULTS/$job.$dev.log json=$RESULTS/$job.$dev.json t=$SECONDS rc=0
    variant "$job" "$dev"
    rm -f "$json"
    if [ -n "$BUDGET" ] && [ $((SECONDS - START)) -ge "$BUDGET" ]; then
        echo "gpu-bench.sh: $job on $dev: skipped (the --budget of $BUDGET s is spent)" >&2
        SKIPPED=$((SKIPPED + 1))
        return 0
    fi
    step "$job on $dev: tidings bench --articles $ARTICLES $*"
    timeout --kill-after=10 "$RUN_TIMEOUT" "$bin" bench --config "$cfg" --articles "$ARTICLES" \
        --json "$json" "$@" > "$log" 2>&1 || rc=$?
    # The table and the last log lines, without the progress bar's redraws.
    tr '\r' '\n' < "$log" | grep -v '^[[:space:]]*$' | tail -n 40 >&2
    if [ "$rc" = 0 ] && [ -s "$json" ]; then
        echo "gpu-bench.sh: $job on $dev: ok in $((SECONDS - t)) s" >&2
        return 0
    fi
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "gpu-bench.sh: $job on $dev: stopped after $RUN_TIMEOUT s (RUN_TIMEOUT)" >&2
    # Opening the device fails the same way for every job: stop at the first.
    if [ "$dev" = cuda ] && grep -q 'cannot open the cuda device' "$log"; then
        die 3 "CUDA: the CUDA device cannot be opened (no usable NVIDIA GPU, or a driver older than CUDA 13.0 needs; log $log): $(grep -m 1 'cannot open the cuda device' "$log")"
    fi
    echo "gpu-bench.sh: $job on $dev: FAILED (exit $rc; log $log)" >&2
    FAILED=$((FAILED + 1))
    return 1
}

# GPU runs first: if time runs out, the numbers that need the GPU are in.
if [ "$GPU" = 1 ]; then
    for j in $JOBS; do bench "$j" cuda "$BIN" || true; done
fi
if [ "$CPU" = 1 ]; then
    for j in $JOBS; do bench "$j" cpu "$CPU_BIN" --threads "$CPU_THREADS" || true; done
fi

# --- The summary. --------------------------------------------------------------
# num FILE KEY: the first number under "KEY" in a bench report (pretty JSON),
# to one decimal; "-" where there is none.
num() {
    local v=""
    [ -s "$1" ] && v=$(grep -m 1 -o "\"$2\": *[-0-9.eE+]*" "$1" | sed 's/.*: *//')
    awk -v v="$v" 'BEGIN { if (v == "") printf "-"; else printf "%.1f", v }'
}
{
    printf 'job\tcuda_articles_per_min\tcpu_articles_per_min\tcuda_over_cpu\tcuda_gen_tok_s\tcpu_gen_tok_s\tcuda_raw_decode_tok_s\tcpu_raw_decode_tok_s\tcuda_raw_batch_decode_tok_s\tcpu_raw_batch_decode_tok_s\n'
    for j in $JOBS; do
        g=$RESULTS/$j.cuda.json c=$RESULTS/$j.cpu.json
        ga=$(num "$g" articles_per_min) ca=$(num "$c" articles_per_min)
        ratio=$(awk -v a="$ga" -v b="$ca" 'BEGIN { if (a != "-" && b != "-" && b + 0 > 0) printf "%.2f", a / b; else printf "-" }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$j" "$ga" "$ca" "$ratio" \
            "$(num "$g" generated_tokens_per_s)" "$(num "$c" generated_tokens_per_s)" \
            "$(num "$g" decode_tokens_per_s)" "$(num "$c" decode_tokens_per_s)" \
            "$(num "$g" batch_decode_tokens_per_s)" "$(num "$c" batch_decode_tokens_per_s)"
    done
} > "$RESULTS/summary.tsv"
step "summary ($RESULTS/summary.tsv)"
column -t -s "$(printf '\t')" "$RESULTS/summary.tsv" >&2 2>/dev/null || cat "$RESULTS/summary.tsv" >&2
if [ -n "$PACK" ]; then
    tar -czf "$PACK" -C "$RESULTS" . && echo "gpu-bench.sh: results packed into $PACK" >&2
fi
[ "$SKIPPED" = 0 ] || echo "gpu-bench.sh: $SKIPPED run(s) skipped: the --budget was spent" >&2
if [ "$FAILED" -gt 0 ]; then die 1 "$FAILED run(s) failed; see the logs in $RESULTS"; fi
echo "gpu-bench.sh: done; results in $RESULTS" >&2
