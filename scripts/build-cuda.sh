#!/usr/bin/env bash
# Builds tidings with `--features cuda` without a system CUDA toolkit, and
# packs a folder that runs the GPU benchmark on a machine that has an NVIDIA
# driver but no Rust toolchain and no network.
#
#   scripts/build-cuda.sh [--bundle DIR] [--models small|all|none] [--slim] [--no-build] [--no-bundle]
#
#   --bundle DIR   where to pack the bundle (default dist/gpu-bench in the repository,
#                  dist/gpu-slim with --slim)
#   --slim         a bundle of about 17 MB instead of 1.4-2.5 GB, for a GPU machine
#                  that has the CUDA 13 libraries (a CUDA toolkit, or PyTorch's
#                  nvidia packages) and Python 3, but that the bundle must reach
#                  through a narrow channel: the binary xz-compressed, no lib/
#                  (gpu-bench.sh finds the machine's libraries), and each model
#                  as a skeleton (its files without the weights, made by
#                  scripts/random_weights.py) that gpu-bench.sh fills with
#                  seeded random weights there. Same shapes, types and tokenizers,
#                  so the same work a token; the text is meaningless. Implies
#                  --models all unless --models is given.
#   --models M     which model files go into the bundle (default small):
#                    small  all-minilm-l6-v2 + smollm2-135m-instruct +
#                           qwen2.5-coder-0.5b-instruct (about 0.7 GB)
#                    all    small + qwen2.5-coder-1.5b-instruct (+1.1 GB) and the
#                           random Marian model of benches/peers if it was made
#                    none   no model files: point TIDINGS_CACHE at a model cache
#                           on the GPU machine instead
#   --no-build     pack the binary an earlier run built
#   --no-bundle    only build
#
# Sizes (CUDA 13.0 wheels, x86_64): the binary 74 MB; the CUDA libraries it
# needs 690 MB (libcublasLt alone 514 MB; libcublas, libcurand, libcudart);
# models 650 MB small, 1.7 GB all. So a bundle is about 0.77 GB with
# --models none, 1.4 GB with small, 2.5 GB with all (zstd saves only a third).
# `du -sh` of the bundle is printed at the end and written to its MANIFEST.txt.
#
# What it does:
#   1. downloads the pinned NVIDIA wheels (CUDA 13.0, what driver 580 runs) with
#      `python3 -m pip download --no-deps` into $CACHE/cuda-13.0/wheels and
#      unzips them together into $CACHE/cuda-13.0/root; its nvidia/cu13 is
#      CUDA_HOME. The wheels ship versioned libraries only (libcublas.so.13):
#      the unversioned names the linker looks for (libcublas.so) are added as
#      links.
#   2. makes a link-time stand-in for the driver library libcuda.so in
#      $CACHE/cuda-13.0/stub (kept out of CUDA_HOME and out of the bundle).
#      candle turns on cudarc's `dynamic-linking`, so the binary is linked
#      against libcuda and cannot start without it; the wheels carry none (the
#      driver provides libcuda.so.1). The stand-in defines every driver
#      function cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34),
#      and has the soname libcuda.so.1, so the binary asks for the real one.
#   3. builds `cargo build --release --locked --features cuda` for
#      CUDA_COMPUTE_CAP=90 (H100/H200) and RUSTFLAGS="-C target-cpu=x86-64-v3"
#      (not `native`: the binary runs on another machine), into
#      $CARGO_TARGET_DIR (default target/cuda in the repository). About 20
#      minutes cold on 2 cores, most of it nvcc compiling candle's kernels.
#   4. packs the bundle: bin/tidings, lib/ (the CUDA libraries the binary
#      needs, never libcuda), jobs/ (bench job configs, device = "cuda"),
#      data/ (the NTREX dev articles if ../shared/data/ntrex is there, else
#      examples/articles.jsonl), models/ (a packaged-model cache as `tidings
#      models fetch` leaves it; gpu-bench.sh points TIDINGS_CACHE at it) and
#      gpu-bench.sh. Run it there as `DIR/gpu-bench.sh [--out DIR]`.
#      With --slim: bin/tidings.xz, no lib/, skeletons/ instead of models/,
#      random_weights.py, and jobs whose sources are path:../models/...
#
# Environment:
#   TIDINGS_CACHE      as for tidings: the packaged-model cache the bundle's
#                      models are copied from (default ~/.cache/tidings/models).
#                      As in benches/peers/run.sh, the wheels and the peers'
#                      Marian model are looked for under ${TIDINGS_CACHE:-~/.cache/tidings}.
#   CARGO_TARGET_DIR   cargo's build folder (default target/cuda in the repository)
#   CUDA_COMPUTE_CAP   the GPU generation to compile for (default 90)
#   CARGO              the cargo to run (default cargo)
#   PYTHON             the interpreter that runs pip (default python3)
# Fill the model cache first, with a CPU build: `tidings models fetch --config configs/smollm2.toml`
# and `--config configs/demo-small.toml` (and configs/ntrex.toml for --models all).
set -Eeuo pipefail
trap 'echo "build-cuda.sh: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${TIDINGS_CACHE:-$HOME/.cache/tidings}
CUDA_CACHE=$CACHE/cuda-13.0
MODEL_CACHE=${TIDINGS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings/models}
PEERS_MODEL=$CACHE/peers/marian-en-es-random
PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
BUNDLE=""
MODELS=""
SLIM=0
BUILD=1
PACK=1

# The pinned wheels: CUDA 13.0 throughout.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
    nvidia-cublas==13.0.0.19
)

die() { echo "build-cuda.sh: $*" >&2; exit 1; }
step() { echo; echo "== $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) [ $# -ge 2 ] || die "--bundle needs a folder"; BUNDLE=$2; shift ;;
        --bundle=*) BUNDLE=${1#--bundle=} ;;
        --models) [ $# -ge 2 ] || die "--models needs small, all or none"; MODELS=$2; shift ;;
        --models=*) MODELS=${1#--models=} ;;
        --slim) SLIM=1 ;;
        --no-build) BUILD=0 ;;
        --no-bundle) PACK=0 ;;
        -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
if [ "$SLIM" = 1 ]; then
    BUNDLE=${BUNDLE:-$ROOT/dist/gpu-slim}; MODELS=${MODELS:-all}
else
    BUNDLE=${BUNDLE:-$ROOT/dist/gpu-bench}; MODELS=${MODELS:-small}
fi
case "$MODELS" in small|all|none) ;; *) die "--models takes small, all or none, not '$MODELS'" ;; esac
[ "$(uname -m)" = x86_64 ] || die "the pinned wheels are for x86_64 Linux, not $(uname -m)"
T0=$SECONDS

# --- 1. The CUDA toolkit from wheels. ----------------------------------------
WHEEL_DIR=$CUDA_CACHE/wheels
mkdir -p "$WHEEL_DIR"
missing=()
wheel_files=()
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}; version=${spec#*==}
    # Wheel file names spell the project name with underscores.
    found=$(find "$WHEEL_DIR" -maxdepth 1 -name "${name//-/_}-$version-*.whl" -print -quit)
    if [ -n "$found" ]; then wheel_files+=("$found"); else missing+=("$spec"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
    step "downloading ${#missing[@]} CUDA wheel(s) into $WHEEL_DIR"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        -d "$WHEEL_DIR" "${missing[@]}"
    wheel_files=()
    for spec in "${WHEELS[@]}"; do
        name=${spec%%==*}; version=${spec#*==}
        found=$(find "$WHEEL_DIR" -maxdepth 1 -name "${name//-/_}-$version-*.whl" -print -quit)
        [ -n "$found" ] || die "pip left no wheel for $spec in $WHEEL_DIR"
        wheel_files+=("$found")
    done
fi

TOOLKIT=$CUDA_CACHE/root
export CUDA_HOME=$TOOLKIT/nvidia/cu13
stamp=$(printf '%s\n' "${wheel_files[@]##*/}" | sort)
if [ ! -f "$TOOLKIT/.wheels" ] || [ "$(cat "$TOOLKIT/.wheels")" != "$stamp" ]; then
    step "unzipping the wheels into $TOOLKIT"
    rm -rf "$TOOLKIT" "$TOOLKIT.partial"
    mkdir -p "$TOOLKIT.partial"
    for w in "${wheel_files[@]}"; do
        unzip -q -o "$w" -d "$TOOLKIT.partial"
    done
    # Linker names: libcublas.so -> libcublas.so.13 and so on.
    for lib in "$TOOLKIT.partial"/nvidia/cu13/lib/lib*.so.*; do
        base=${lib##*/}
        ln -sfn "$base" "${lib%/*}/${base%%.so.*}.so"
    done
    printf '%s\n' "$stamp" > "$TOOLKIT.partial/.wheels"
    mv "$TOOLKIT.partial" "$TOOLKIT"
fi
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc in $CUDA_HOME/bin after unzipping the wheels"
export PATH=$CUDA_HOME/bin:$PATH
export LD_LIBRARY_PATH=$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$CUDA_HOME/bin/nvcc" --version | tail -n 2 >&2

# --- 2. The link-time stand-in for libcuda. ---------------------------------
STUB=$CUDA_CACHE/stub
if [ "$BUILD" = 1 ]; then
    # The driver functions cudarc declares, from the cudarc source the lock file pins.
    cudarc_dir=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --locked --features cuda \
        | "$PYTHON" -c '
import json, os, sys
meta = json.load(sys.stdin)
dirs = [os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "cudarc"]
print(dirs[0] if dirs else "")
')
    [ -n "$cudarc_dir" ] || die "cargo metadata names no cudarc package (is the cuda feature wired to candle?)"
    sys_rs=$cudarc_dir/src/driver/sys/mod.rs
    [ -f "$sys_rs" ] || die "no driver bindings at $sys_rs (cudarc changed its layout?)"
    symbols=$(grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys_rs" | sed 's/^pub unsafe fn //' | sort -u)
    [ -n "$symbols" ] || die "found no driver functions in $sys_rs"
    want=$(printf '%s\n' "$symbols" | sha256sum | cut -c1-16)
    if [ ! -f "$STUB/libcuda.so" ] || [ "$(cat "$STUB/.symbols" 2>/dev/null)" != "$want" ]; then
        step "making the link-time libcuda stand-in ($(printf '%s\n' "$symbols" | wc -l) functions) in $STUB"
        mkdir -p "$STUB"
        {
            echo "/* Link-time stand-in for the NVIDIA driver library, written by"
            echo "   scripts/build-cuda.sh. Never shipped: the driver provides libcuda.so.1."
            echo "   Every function returns CUDA_ERROR_STUB_LIBRARY. */"
            printf 'int %s(void) { return 34; }\n' $symbols
        } > "$STUB/libcuda-stub.c"
        gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/libcuda-stub.c"
        echo "$want" > "$STUB/.symbols"
    fi
fi

# --- 3. The build. -------------------------------------------------------------
# RUSTFLAGS replaces build.rustflags of .cargo/config.toml (target-cpu=native).
# The rpath lets the bundled binary find ../lib without LD_LIBRARY_PATH.
export RUSTFLAGS="-C target-cpu=x86-64-v3 -L native=$STUB -C link-arg=-Wl,-rpath,\$ORIGIN/../lib"
BIN=$CARGO_TARGET_DIR/release/tidings
if [ "$BUILD" = 1 ]; then
    step "cargo build --release --locked --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, into $CARGO_TARGET_DIR)"
    t=$SECONDS
    (cd "$ROOT" && "$CARGO" build --release --locked --features cuda)
    echo "build-cuda.sh: cargo build took $((SECONDS - t)) s" >&2
fi
[ -x "$BIN" ] || die "no binary at $BIN (run without --no-build)"
readelf -d "$BIN" | grep -q 'NEEDED.*\[libcuda\.so\.1\]' \
    || echo "build-cuda.sh: note: $BIN does not ask for libcuda.so.1 (was it built with --features cuda?)" >&2
echo "build-cuda.sh: binary $BIN ($(du -h "$BIN" | cut -f1)); it needs:" >&2
readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/    \1/p' >&2
[ "$PACK" = 1 ] || { echo "build-cuda.sh: done in $((SECONDS - T0)) s (no bundle)" >&2; exit 0; }

# --- 4. The bundle. --------------------------------------------------------------
step "packing $BUNDLE (models: $MODELS$([ "$SLIM" = 0 ] || echo ', slim: skeletons'))"
case "$BUNDLE" in /*) ;; *) BUNDLE=$PWD/$BUNDLE ;; esac
[ "$BUNDLE" != / ] && [ "$BUNDLE" != "$ROOT" ] || die "refusing to pack into $BUNDLE"
# Only an earlier bundle (or an empty folder) is replaced.
if [ -d "$BUNDLE" ] && [ -n "$(ls -A "$BUNDLE")" ] && [ ! -f "$BUNDLE/MANIFEST.txt" ]; then
    die "$BUNDLE is not empty and holds no bundle (no MANIFEST.txt): pick another --bundle"
fi
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/jobs" "$BUNDLE/data"
cp "$HERE/gpu-bench.sh" "$BUNDLE/gpu-bench.sh"
chmod +x "$BUNDLE/gpu-bench.sh"
needed_of() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

if [ "$SLIM" = 1 ]; then
    # The binary compressed (74 MB -> about a quarter); gpu-bench.sh unpacks it.
    xz -T0 -6 -c "$BIN" > "$BUNDLE/bin/tidings.xz"
    cp "$HERE/random_weights.py" "$BUNDLE/random_weights.py"
else
    mkdir -p "$BUNDLE/lib"
    cp "$BIN" "$BUNDLE/bin/tidings"

    # The CUDA libraries: what the binary asks for (NEEDED), what those ask for in
    # turn, and what libnvrtc loads itself (its builtins). libcuda comes from the driver.
    queue=$(needed_of "$BIN")
    copied=" "
    while [ -n "$queue" ]; do
        next=""
        for lib in $queue; do
            case "$copied" in *" $lib "*) continue ;; esac
            [ "$lib" != libcuda.so.1 ] || continue
            [ -e "$CUDA_HOME/lib/$lib" ] || continue    # a system library (libc, libstdc++...)
            cp -L "$CUDA_HOME/lib/$lib" "$BUNDLE/lib/$lib"
            copied="$copied$lib "
            next="$next $(needed_of "$CUDA_HOME/lib/$lib")"
            if [ "${lib%%.so.*}" = libnvrtc ]; then
                for b in "$CUDA_HOME"/lib/libnvrtc-builtins.so.*; do
                    cp -L "$b" "$BUNDLE/lib/${b##*/}"; copied="$copied${b##*/} "
                done
            fi
        done
        queue=$next
    done
    [ -n "${copied// /}" ] || die "the binary needs no CUDA library: it was not built with --features cuda"
    [ ! -e "$BUNDLE/lib/libcuda.so" ] && [ ! -e "$BUNDLE/lib/libcuda.so.1" ] || die "libcuda got into the bundle"
fi

# The input: NTREX dev articles beside the repository, else the sample articles.
NTREX=$ROOT/../shared/data/ntrex/ntrex-dev.jsonl
if [ -f "$NTREX" ]; then
    cp "$NTREX" "$BUNDLE/data/ntrex-dev.jsonl"; INPUT=ntrex-dev.jsonl
else
    cp "$ROOT/examples/articles.jsonl" "$BUNDLE/data/articles.jsonl"; INPUT=articles.jsonl
fi

# The jobs. gpu-bench.sh runs each as written (device = "cuda") and again on
# the CPU; paths are relative to jobs/, as tidings reads them.
# source_of PACKAGE: a job's source for a packaged model: the model cache
# (pkg:), or with --slim the folder gpu-bench.sh fills from its skeleton.
source_of() {
    if [ "$SLIM" = 0 ]; then echo "pkg:$1"; return; fi
    local gguf
    gguf=$(find "$MODEL_CACHE/$1" -maxdepth 1 -name '*.gguf' -printf '%f\n' 2>/dev/null | head -n 1)
    echo "path:../models/$1${gguf:+/$gguf}"
}
# With --slim the models' weights are random, their end tokens out of reach
# (random_weights.py), and the repetition guard off: every generation runs
# to its cap, the same work on the GPU and on the CPU.
guard=true
[ "$SLIM" = 0 ] || guard=false
# write_job NAME MODEL_KEY PACKAGE MAX_NEW_TOKENS SENTENCES
write_job() {
    cat > "$BUNDLE/jobs/$1.toml" <<EOF
# Written by scripts/build-cuda.sh: extractive summary (MiniLM, $5 sentences),
# title and summary into Spanish and Persian with $3.
[input]
path = "../data/$INPUT"

[output]
path = "../out/$1.jsonl"

[summary]
model = "minilm"
sentences = $5

[translate]
targets = ["es", "fa"]
fields = ["title", "summary"]
models = { es = "$2", fa = "$2" }

[models.minilm]
source = "$(source_of all-minilm-l6-v2)"

[models.$2]
source = "$(source_of "$3")"

[generation]
max-new-tokens = $4
max-length-ratio = 2.0
repetition-guard = $guard

[runtime]
device = "cuda"
EOF
}
write_job smollm2 smollm2 smollm2-135m-instruct 128 2
write_job qwen0_5b qwen0_5b qwen2.5-coder-0.5b-instruct 256 3
packages=(all-minilm-l6-v2 smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)
if [ "$MODELS" = all ]; then
    write_job qwen1_5b qwen1_5b qwen2.5-coder-1.5b-instruct 256 3
    packages+=(qwen2.5-coder-1.5b-instruct)
fi

# The random-weight Marian network of benches/peers/run.sh, if it was made:
# its sentences, beam 1 and 4, the same settings as the peers' comparison.
if [ "$MODELS" = all ] && [ -f "$PEERS_MODEL/peers.json" ]; then
    data=$(ls -d "$CACHE"/peers/data-* 2>/dev/null | sort -t- -k2 -n | tail -n 1 || true)
    if [ -n "$data" ] && [ -f "$data/sentences.jsonl" ]; then
        if [ "$SLIM" = 1 ]; then
            "$PYTHON" "$HERE/random_weights.py" skeleton "$PEERS_MODEL" "$BUNDLE/skeletons/marian-en-es-random"
            marian_source=path:../models/marian-en-es-random
        else
            cp -a "$PEERS_MODEL" "$BUNDLE/marian-en-es-random"
            marian_source=path:../marian-en-es-random
        fi
        cp "$data/sentences.jsonl" "$BUNDLE/data/marian-sentences.jsonl"
        for beam in 1 4; do
            cat > "$BUNDLE/jobs/marian-random-beam$beam.toml" <<EOF
# Written by scripts/build-cuda.sh: the random-weight Marian network of
# benches/peers (opus-mt-en-es dimensions) on its sentences, beam $beam.
[input]
path = "../data/marian-sentences.jsonl"
lang = "en"

[output]
path = "../out/marian-random-beam$beam.jsonl"

[translate]
targets = ["es"]
fields = ["text"]
models = { es = "marian" }

[models.marian]
source = "$marian_source"

[generation]
beam-size = $beam
max-new-tokens = 28
max-length-ratio = 100
repetition-guard = false

[runtime]
device = "cuda"
window = 512
EOF
        done
    fi
fi

# The models, laid out as `tidings models fetch` leaves them (--slim: their
# skeletons).
if [ "$MODELS" != none ]; then
    for p in "${packages[@]}"; do
        [ -d "$MODEL_CACHE/$p" ] || die "$p is not in the model cache $MODEL_CACHE; fill it with a CPU build: tidings models fetch --config configs/smollm2.toml (and configs/demo-small.toml, configs/ntrex.toml), or pack with --models none"
        case "$(ls -A "$MODEL_CACHE/$p")" in
            *.partial*|"") die "$MODEL_CACHE/$p is incomplete (a fetch still running?)" ;;
        esac
        if [ "$SLIM" = 1 ]; then
            "$PYTHON" "$HERE/random_weights.py" skeleton "$MODEL_CACHE/$p" "$BUNDLE/skeletons/$p"
        else
            mkdir -p "$BUNDLE/models"
            cp -a --reflink=auto "$MODEL_CACHE/$p" "$BUNDLE/models/$p"
        fi
    done
fi

size=$(du -sh "$BUNDLE" | cut -f1)
{
    echo "tidings GPU bench bundle, packed by scripts/build-cuda.sh on $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "CUDA 13.0 wheels, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, RUSTFLAGS=-C target-cpu=x86-64-v3"
    echo "run: ./gpu-bench.sh [--out DIR]   (needs an NVIDIA driver for CUDA 13.0, i.e. 580 or newer)"
    [ "$SLIM" = 0 ] || echo "slim: also needs python3 and the CUDA 13 libraries on that machine (\$CUDA_HOME, /usr/local/cuda or PyTorch's nvidia packages)"
    echo
    echo "size: $size"
    [ "$SLIM" = 0 ] || echo "slim: models as skeletons; gpu-bench.sh fills them with seeded random weights"
    for d in bin lib jobs data models skeletons marian-en-es-random; do
        [ ! -e "$BUNDLE/$d" ] || (cd "$BUNDLE" && du -sh "$d")
    done
    echo
    echo "binary needs:"; needed_of "$BIN" | sed 's/^/  /'
    echo "sha256:"; (cd "$BUNDLE" && sha256sum bin/* $(find lib -type f 2>/dev/null | sort || true)) | sed 's/^/  /'
} > "$BUNDLE/MANIFEST.txt"
echo "build-cuda.sh: bundle $BUNDLE: $size; done in $((SECONDS - T0)) s" >&2
