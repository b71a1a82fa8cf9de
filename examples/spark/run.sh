#!/usr/bin/env bash
# Runs tidings as a Spark pipe stage in local mode, installing pyspark into a
# cached virtual environment first (nothing is installed system-wide).
#
#   examples/spark/run.sh [tidings_spark.py flags]   a job, e.g.
#       examples/spark/run.sh --input examples/articles.jsonl \
#           --config configs/smollm2.toml --output out/spark.parquet --partitions 2
#   examples/spark/run.sh --test                     the Spark tests (make spark-test)
#
# Needs Java 17 (or 11) and python3. The venv lives in
# ${TIDINGS_SPARK_VENV:-$HOME/.cache/tidings/spark-venv}. When pyspark cannot
# be installed, --test says so and exits 0, except under CI=true, where that
# is a failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${TIDINGS_SPARK_VENV:-$HOME/.cache/tidings/spark-venv}"
# pyspark 3.5 runs on Java 8/11/17; 4.x needs Java 17+ and is larger.
pyspark_pin="pyspark==3.5.9"

skip_or_fail() {
    if [ "${CI:-}" = "true" ]; then
        echo "spark: $1 (required under CI=true)" >&2
        exit 2
    fi
    echo "spark: skipped: $1" >&2
    exit 0
}

testing=false
[ "${1:-}" = "--test" ] && testing=true

if ! command -v java >/dev/null 2>&1; then
    $testing && skip_or_fail "java not found (install a Java 17 runtime)"
    echo "spark: java not found (install a Java 17 runtime)" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pyspark" 2>/dev/null; then
    echo "spark: installing $pyspark_pin into $venv" >&2
    if ! { python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q "$pyspark_pin"; }; then
        $testing && skip_or_fail "cannot install $pyspark_pin"
        echo "spark: cannot install $pyspark_pin" >&2
        exit 2
    fi
fi

export PYSPARK_PYTHON="$venv/bin/python"
# Spark binds to loopback in local mode; no host-name lookups.
export SPARK_LOCAL_IP=127.0.0.1
cd "$repo"
if $testing; then
    shift
    exec "$venv/bin/python" "$here/test_spark.py" "$@"
fi
exec "$venv/bin/python" "$here/tidings_spark.py" "$@"
