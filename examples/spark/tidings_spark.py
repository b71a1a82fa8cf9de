#!/usr/bin/env python3
"""tidings as an Apache Spark pipe stage.

Reads a JSONL dump of articles into a DataFrame, spreads it over N
partitions, pipes each partition through

    tidings run --config JOB --input - --output - --errors inline --no-progress

with ``RDD.pipe`` (one tidings process per task: it loads the job's models
once and works through the partition window by window), parses the output
lines back into a typed DataFrame and writes Parquet.

Why this is safe under failures: tidings writes exactly one output line per
input line, in input order, and a failed record is an output line too
(``--errors inline``). When a task dies (its process killed, its executor
lost), Spark discards everything that attempt wrote and runs the whole
partition again from the same shuffle output, so each article ends up in the
Parquet output exactly once. ``spark.task.maxFailures`` (or ``local[N,F]`` in
local mode) bounds the retries.

Line numbers: tidings gives a record without an id its line number, and
reports an unreadable line under its line number. Inside a partition that
would be the line within the partition, which is not unique across
partitions. So this script numbers the lines of the whole dump first
(``zipWithIndex``), gives id-less records their global line number, and turns
lines that are not JSON objects into error rows itself; ids then match what a
single ``tidings run`` over the whole file would have written.

Exit codes: tidings exits 1 when some records failed; with inline errors
that is a normal outcome for a partition, so the pipe command maps it to 0.
Any other non-zero exit (2: the job could not run; a signal) fails the task.

Run it with ``run.sh`` beside this file (it installs pyspark into a cache
folder), or with ``spark-submit`` on a cluster, where every executor needs
the ``tidings`` binary, the job config and the model cache (``TIDINGS_CACHE``)
at the same paths; fetch the models once (``tidings models fetch``) and set
``HF_HUB_OFFLINE=1`` so no task downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None

from pyspark import SparkConf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

REPO = Path(__file__).resolve().parents[2]

#: One output line of tidings, as DESIGN.md's contract gives it: a processed
#: article, or (``error`` set) a failed one.
OUTPUT_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType(), False),
        T.StructField("lang", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("summary", T.StringType()),
        T.StructField(
            "translations",
            T.MapType(
                T.StringType(),
                T.StructType(
                    [
                        T.StructField("title", T.StringType()),
                        T.StructField("summary", T.StringType()),
                        T.StructField("text", T.StringType()),
                    ]
                ),
            ),
        ),
        T.StructField(
            "meta",
            T.StructType(
                [
                    T.StructField("models", T.MapType(T.StringType(), T.StringType())),
                    T.StructField("input_tokens", T.LongType()),
                    T.StructField("output_tokens", T.LongType()),
                    T.StructField("elapsed_ms", T.LongType()),
                ]
            ),
        ),
        T.StructField(
            "error",
            T.StructType(
                [
                    T.StructField("kind", T.StringType()),
                    T.StructField("message", T.StringType()),
                    T.StructField("line", T.LongType()),
                    T.StructField("field", T.StringType()),
                ]
            ),
        ),
    ]
)

#: Variables the tidings processes get from the driver's environment.
#: ``RDD.pipe`` starts them with only the variables it is given.
PASSED_ENV = (
    "PATH",
    "HOME",
    "TIDINGS_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "RUST_LOG",
    "CANDLE_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
)

#: Runs "$@" (tidings, or a wrapper around it) and maps exit 1 (some records
#: failed, reported inline) to success.
PIPE_SCRIPT = '"$@"; rc=$?; if [ "$rc" -eq 1 ]; then rc=0; fi; exit "$rc"'


def id_field(config: Path) -> str:
    """The job's ``input.id-field`` (``id`` when unset)."""
    if tomllib is None:
        return "id"
    with open(config, "rb") as f:
        job = tomllib.load(f)
    return job.get("input", {}).get("id-field", "id")


def find_tidings() -> str:
    """``tidings`` on PATH, else this repository's release build."""
    found = shutil.which("tidings")
    if found:
        return found
    return str(REPO / "target" / "release" / "tidings")


def pipe_command(tidings: str, config: Path, wrap: list[str]) -> str:
    """The command line ``RDD.pipe`` runs for each partition."""
    argv = [
        "/bin/sh",
        "-c",
        PIPE_SCRIPT,
        "tidings-pipe",
        *wrap,
        tidings,
        "run",
        "--config",
        str(config),
        "--input",
        "-",
        "--output",
        "-",
        "--errors",
        "inline",
        "--no-progress",
    ]
    return shlex.join(argv)


def _to_tidings(id_key: str):
    """For a numbered input line: the line to send to tidings, if any."""

    def f(pair):
        value, index = pair
        line = index + 1
        if not value.strip():
            return []
        try:
            obj = json.loads(value)
        except ValueError:
            return []
        if not isinstance(obj, dict):
            return []
        if obj.get(id_key) is None:
            obj[id_key] = str(line)
            return [json.dumps(obj, ensure_ascii=False)]
        return [value]

    return f


def _unreadable(source: str):
    """For a numbered input line that is not a JSON object: its error row."""

    def f(pair):
        value, index = pair
        line = index + 1
        if not value.strip():
            return []
        try:
            obj = json.loads(value)
            if isinstance(obj, dict):
                return []
            message = f"{source}:{line}: expected a JSON object, found {type(obj).__name__}"
        except ValueError as e:
            message = f"{source}:{line}: invalid JSON: {e}"
        record = {
            "id": str(line),
            "error": {"kind": "invalid_json", "message": message, "line": line},
        }
        return [json.dumps(record, ensure_ascii=False)]

    return f


def translate(
    spark: SparkSession,
    input_path: str,
    config: Path,
    partitions: int,
    tidings: str | None = None,
    wrap: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> DataFrame:
    """The pipeline as a lazy DataFrame of ``OUTPUT_SCHEMA`` rows: nothing
    runs until it is written (write it once; every further action would run
    the models again unless it is cached)."""
    config = Path(config).resolve()
    tidings = tidings or find_tidings()
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(extra_env or {})
    # Global line numbers, in file order: (value, index).
    numbered = spark.read.text(input_path).rdd.map(lambda r: r.value).zipWithIndex()
    lines = spark.createDataFrame(
        numbered.map(lambda p: (p[1] + 1, p[0])),
        T.StructType(
            [
                T.StructField("line", T.LongType(), False),
                T.StructField("value", T.StringType(), False),
            ]
        ),
    )
    # Hash partitioning on the line number is deterministic, so a retried
    # task reads exactly the rows its failed attempt read.
    parts = lines.repartition(partitions, "line").sortWithinPartitions("line")
    pairs = parts.rdd.map(lambda r: (r.value, r.line - 1))
    to_pipe = pairs.flatMap(_to_tidings(id_field(config)))
    piped = to_pipe.pipe(pipe_command(tidings, config, wrap or []), env=env, checkCode=True)
    unreadable = numbered.flatMap(_unreadable(input_path))
    return (
        spark.read.schema(OUTPUT_SCHEMA)
        .option("mode", "FAILFAST")
        .json(piped.union(unreadable))
    )


def session(master: str | None, app: str = "tidings", conf: dict[str, str] | None = None):
    """A SparkSession; without a master from spark-submit or ``--master``,
    local mode on two cores with up to four tries per task."""
    builder = SparkSession.builder.appName(app)
    if master is None and not SparkConf().contains("spark.master"):
        master = "local[2,4]"
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # A single machine: no UI, and no dependence on the host name resolving.
        for k, v in {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.pyspark.python": sys.executable,
            "spark.sql.shuffle.partitions": "4",
        }.items():
            builder = builder.config(k, v)
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="JSONL dump (a file or folder Spark can read)")
    p.add_argument("--config", required=True, type=Path, help="tidings job config (TOML)")
    p.add_argument("--output", required=True, help="Parquet folder to write (replaced)")
    p.add_argument("--partitions", type=int, default=None,
                   help="tidings processes in all (default: Spark's default parallelism)")
    p.add_argument("--tidings", default=None, help="the tidings binary (default: PATH, then target/release)")
    p.add_argument("--master", default=None, help="Spark master (default: spark-submit's, else local[2,4])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark settings, e.g. spark.task.maxFailures=4")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the tidings processes")
    p.add_argument("--wrap", default="", help="command put before tidings in the pipe (testing)")
    args = p.parse_args(argv)

    conf = dict(c.split("=", 1) for c in args.conf)
    spark = session(args.master, conf=conf)
    partitions = args.partitions or spark.sparkContext.defaultParallelism
    start = time.monotonic()
    df = translate(
        spark,
        args.input,
        args.config,
        partitions,
        tidings=args.tidings,
        wrap=shlex.split(args.wrap),
        extra_env=dict(e.split("=", 1) for e in args.env),
    )
    df.write.mode("overwrite").parquet(args.output)
    written = spark.read.parquet(args.output)
    total = written.count()
    failed = written.filter("error IS NOT NULL").count()
    print(
        f"tidings-spark: {total - failed} ok, {failed} errors, {partitions} partitions, "
        f"{time.monotonic() - start:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
