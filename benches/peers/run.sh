#!/usr/bin/env bash
# Side-by-side throughput: tidings against CTranslate2 and transformers on the
# same Marian network (random weights, opus-mt-en-es dimensions), the same
# sentences, 2 threads, and exactly 28 target tokens per sentence.
#
#   benches/peers/run.sh [--quick] [--only ct2|hf|tidings] [--rebuild]
#
#   --quick     50 sentences instead of 500 (a smoke test)
#   --only X    run only CTranslate2 (ct2), transformers (hf) or tidings; the
#               comparison uses whatever results the others left before
#   --rebuild   make the model, its conversions and the inputs again
#   --sentences N   the first N sentences (a smaller smoke test than --quick)
#   --batched-only  peers in sorted batches only, not one sentence at a time
#               (a quicker repeat; the batch-1 results already on disk stay)
#
# Everything goes under ${TIDINGS_CACHE:-~/.cache/tidings}:
#   peers-venv/                       Python venv with the pinned peers
#   peers/marian-en-es-random{,-ct2,-ct2-int8}/   the model and its conversions
#   peers/data-N/                     sentences.jsonl, pieces.jsonl, plan.json
#   peers/jobs/                       the tidings job configs
#   peers/results/ (500 sentences), peers/results-nN/ (others): peers.json,
#                                     tidings-*.json and their logs
#
# Environment: NTREX (the NTREX dev JSONL; default ../shared/data/ntrex/
# ntrex-dev.jsonl beside the repository), PEERS_TORCH_INDEX (a pip index URL
# for a CPU-only torch wheel; unset: torch from the default index), PYTHON
# (the interpreter that makes the venv; default python3).
set -Eeuo pipefail
trap 'echo "peers/run.sh: FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${TIDINGS_CACHE:-$HOME/.cache/tidings}
PEERS=$CACHE/peers
VENV=$CACHE/peers-venv
NTREX=${NTREX:-$ROOT/../shared/data/ntrex/ntrex-dev.jsonl}
THREADS=2
NEW_TOKENS=28
N=500
HF_SINGLE=50
ONLY=""
REBUILD=0
BATCHED_ONLY=0

die() { echo "peers/run.sh: $*" >&2; exit 1; }
step() { echo; echo "== $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) N=50 ;;
        --only) [ $# -ge 2 ] || die "--only needs ct2, hf or tidings"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        --rebuild) REBUILD=1 ;;
        --batched-only) BATCHED_ONLY=1 ;;
        --sentences) [ $# -ge 2 ] || die "--sentences needs a number"; N=$2; shift ;;
        -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
case "$N" in ''|*[!0-9]*|0) die "--sentences takes a positive number, not '$N'" ;; esac
case "$ONLY" in ""|ct2|hf|tidings) ;; *) die "--only takes ct2, hf or tidings, not '$ONLY'" ;; esac
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
[ -f "$NTREX" ] || die "no NTREX data at $NTREX (set NTREX=PATH)"
if [ "$N" = 500 ]; then RESULTS=$PEERS/results; else RESULTS=$PEERS/results-n$N; fi
mkdir -p "$PEERS" "$RESULTS" "$PEERS/jobs"
T0=$SECONDS
# Two math threads per tool measure well only on a quiet machine: with other
# work on the cores, OpenMP's 2-thread runs (transformers, CTranslate2)
# collapse, several times slower than 1 thread.
read -r LOAD1 _ < /proc/loadavg || LOAD1=0
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
    echo "peers/run.sh: WARNING: load average $LOAD1 before starting; the machine is not quiet," \
        "so the timings will be off (2-thread runs suffer most)" >&2
fi

# --- The Python peers, pinned. ---------------------------------------------
PINS="ctranslate2==4.8.5 transformers==5.24.0 torch==2.15.0 sentencepiece==0.2.3 safetensors numpy"
PY=$VENV/bin/python
if [ ! -f "$VENV/.pins" ] || [ "$(cat "$VENV/.pins")" != "$PINS ${PEERS_TORCH_INDEX:-}" ]; then
    step "installing the peers into $VENV (once; torch is large)"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    if [ -n "${PEERS_TORCH_INDEX:-}" ]; then
        "$PY" -m pip install --quiet --index-url "$PEERS_TORCH_INDEX" torch==2.15.0
    fi
    if ! "$PY" -m pip install --quiet $PINS; then
        echo "peers/run.sh: ctranslate2==4.8.5 did not install with the rest; trying the newest ctranslate2" >&2
        "$PY" -m pip install --quiet ${PINS/ctranslate2==4.8.5/ctranslate2}
    fi
    echo "$PINS ${PEERS_TORCH_INDEX:-}" > "$VENV/.pins"
fi
"$PY" - <<'EOF'
import importlib.util, sys
import ctranslate2, torch, transformers, sentencepiece
print(f"peers: ctranslate2 {ctranslate2.__version__}, transformers {transformers.__version__}, "
      f"torch {torch.__version__}, sentencepiece {sentencepiece.__version__}", file=sys.stderr)
if importlib.util.find_spec("sacremoses"):
    sys.exit("peers: sacremoses is installed in the venv: MarianTokenizer would normalise "
             "punctuation that tidings does not; remove it")
EOF
export PYTHONWARNINGS="ignore::UserWarning"  # sacremoses' "Recommended" note
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# --- The model, its conversions, the inputs. -------------------------------
MODEL=$PEERS/marian-en-es-random
DATA=$PEERS/data-$N
if [ "$REBUILD" = 1 ]; then rm -rf "$MODEL" "$MODEL-ct2" "$MODEL-ct2-int8" "$PEERS"/data-*; fi
if [ ! -f "$MODEL/peers.json" ]; then
    step "making the random Marian model in $MODEL"
    rm -rf "$MODEL" "$MODEL-ct2" "$MODEL-ct2-int8" "$PEERS"/data-*
    "$PY" "$HERE/make_marian.py" --data "$NTREX" --out "$MODEL"
fi
if [ ! -f "$MODEL-ct2/model.bin" ]; then
    step "converting it with ct2-transformers-converter (float32)"
    "$VENV/bin/ct2-transformers-converter" --model "$MODEL" --output_dir "$MODEL-ct2" --force
fi
if [ ! -f "$MODEL-ct2-int8/model.bin" ]; then
    step "converting it with ct2-transformers-converter (int8)"
    "$VENV/bin/ct2-transformers-converter" --model "$MODEL" --output_dir "$MODEL-ct2-int8" \
        --quantization int8 --force
fi
if [ ! -f "$DATA/plan.json" ]; then
    step "writing the first $N NTREX sentences to $DATA"
    "$PY" "$HERE/sentences.py" --data "$NTREX" --model "$MODEL" --out "$DATA" --n "$N"
fi

# --- CTranslate2 and transformers. -----------------------------------------
if want ct2 || want hf; then
    only=()
    if [ -n "$ONLY" ]; then only=(--only "$ONLY"); fi
    if [ "$BATCHED_ONLY" = 1 ]; then only+=(--batched-only); fi
    step "peers: $N sentences, $THREADS threads, $NEW_TOKENS new tokens each"
    # Earlier results of settings not measured now are kept: merge below.
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" "$HERE/peers.py" \
        --model "$MODEL" --ct2 "$MODEL-ct2" --ct2-int8 "$MODEL-ct2-int8" \
        --pieces "$DATA/pieces.jsonl" --json "$RESULTS/peers-${ONLY:-all}.json" \
        --threads "$THREADS" --new-tokens "$NEW_TOKENS" --hf-single "$HF_SINGLE" "${only[@]}"
    "$PY" - "$RESULTS" "${ONLY:-all}" <<'EOF'
import json, os, sys
d, which = sys.argv[1], sys.argv[2]
new = json.load(open(os.path.join(d, f"peers-{which}.json")))
path = os.path.join(d, "peers.json")
old = json.load(open(path)) if os.path.exists(path) else None
if old and old.get("sentences") == new["sentences"]:
    # results of settings this run did not measure stay (the other peer,
    # the batch-1 runs of a --batched-only repeat)
    names = {r["name"] for r in new["results"]}
    new["results"] = [r for r in old["results"] if r["name"] not in names] + new["results"]
json.dump(new, open(path, "w"), indent=2)
EOF
fi

# --- tidings. ----------------------------------------------------------------
# write_job FILE BEAM WORKERS BATCH_TOKENS MAX_NEW_TOKENS OUTPUT
write_job() {
    cat > "$1" <<EOF
# Written by benches/peers/run.sh: tidings on the peers' benchmark.
[input]
path = "$DATA/sentences.jsonl"
lang = "en"

[output]
path = "$6"

[translate]
targets = ["es"]
fields = ["text"]
models = { es = "marian" }

[models.marian]
source = "path:$MODEL"
quantize = "${7:-none}"

[generation]
beam-size = $2
max-new-tokens = $5
max-length-ratio = 100
repetition-guard = false

[runtime]
device = "cpu"
threads = $THREADS
workers = $3
# About 32 sentences per batch (see $DATA/plan.json).
batch-tokens = $4
window = 512
EOF
}

if want tidings; then
    BIN=$ROOT/target/release/tidings
    if [ ! -x "$BIN" ]; then
        step "building tidings (cargo build --release)"
        (cd "$ROOT" && cargo build --release)
    elif [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" -print -quit)" ]; then
        echo "peers/run.sh: WARNING: $BIN is older than the sources; run cargo build --release" \
            "(or make peers) to measure the current tidings" >&2
    fi
    read -r B1 B4 < <("$PY" -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["tidings"]["beam1"]["batch_tokens"], p["tidings"]["beam4"]["batch_tokens"])
' "$DATA/plan.json")

    # tidings segments the `text` field into sentences itself; where it cuts
    # one of NTREX's sentences in two, it has more (and shorter) inputs than
    # the peers. A cheap run (2 new tokens: one, then the forced end token)
    # counts its segments per record, so that the comparison knows the work.
    step "tidings: how it segments the $N sentences"
    job=$PEERS/jobs/tidings-segments-n$N.toml
    write_job "$job" 1 1 "$B1" 2 "$RESULTS/tidings-segments.out.jsonl"
    "$BIN" validate --config "$job" >&2
    "$BIN" run --config "$job" 2> "$RESULTS/tidings-segments.log" \
        || { cat "$RESULTS/tidings-segments.log" >&2; die "tidings run failed ($job)"; }
    "$PY" "$HERE/compare.py" segments --results "$RESULTS" --data "$DATA"

    for beam in 1 4; do
        budget=$B1; [ "$beam" = 4 ] && budget=$B4
        for variant in 1 2 2-q8_0; do
            workers=${variant%%-*}
            quant=none; [ "$variant" != "$workers" ] && quant=${variant#*-}
            name=tidings-beam$beam-workers$variant
            job=$PEERS/jobs/$name-n$N.toml
            write_job "$job" "$beam" "$workers" "$budget" "$NEW_TOKENS" "$RESULTS/$name.out.jsonl" "$quant"
            step "tidings beam $beam, $workers worker(s), weights $quant: $job"
            "$BIN" validate --config "$job" >&2
            "$BIN" bench --config "$job" --json "$RESULTS/$name.json" 2> "$RESULTS/$name.log" \
                || { cat "$RESULTS/$name.log" >&2; die "tidings bench failed ($job)"; }
            cat "$RESULTS/$name.log" >&2
        done
    done
fi

# --- The comparison. ---------------------------------------------------------
step "comparison ($N sentences, $THREADS threads; results in $RESULTS)"
"$PY" "$HERE/compare.py" table --results "$RESULTS" --plan "$DATA/plan.json" --new-tokens "$NEW_TOKENS"
echo "peers/run.sh: done in $((SECONDS - T0)) s" >&2
