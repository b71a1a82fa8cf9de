#!/usr/bin/env python3
"""End-to-end tests of tidings as a Spark pipe stage (``make spark-test``).

Runs ``tidings_spark.translate`` in local mode on 20 NTREX-128 articles plus
three records that must fail or be renumbered (a line that is not JSON, an
article without an id, an empty text), with ``configs/spark-test.toml``
(MiniLM summary, SmolLM2 title translation into Spanish), and checks:

1. every input record is in the Parquet output exactly once, processed or
   as an error row, with the types of the output schema;
2. a task whose process is SIGKILLed part way is retried by Spark and the
   output is still each record exactly once, and the same as without the
   fault.

Needs the release binary and the test models (``make fetch-test-models``).
Where the NTREX articles are absent it says so and skips, except under
``CI=true``. Prints ``N passed, N failed`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import tidings_spark  # noqa: E402

NTREX = REPO.parent / "shared" / "data" / "ntrex" / "ntrex-dev.jsonl"
CONFIG = REPO / "configs" / "spark-test.toml"
BINARY = REPO / "target" / "release" / "tidings"
ARTICLES = 20
PARTITIONS = 3
IN_CI = os.environ.get("CI") == "true"


def write_input(path: Path) -> dict[str, str]:
    """The test input; returns the expected id -> "ok" or an error kind."""
    lines = NTREX.read_text(encoding="utf-8").splitlines()[:ARTICLES]
    expected = {json.loads(l)["id"]: "ok" for l in lines}
    extra = [
        "this line is not JSON",
        json.dumps({"title": "No id here", "text": "The mayor opened the new bridge on Friday."}),
        json.dumps({"id": "spark-empty", "title": "Empty", "text": "   "}),
    ]
    # Interleave them, so each lands in some partition among articles.
    body = lines[:5] + extra[:1] + lines[5:12] + extra[1:2] + lines[12:] + extra[2:]
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    expected[str(6)] = "invalid_json"  # line 6: renumbered globally, not per partition
    expected[str(14)] = "ok"  # line 14: no id, so its line number
    expected["spark-empty"] = "empty_text"
    return expected


def check_output(rows, expected: dict[str, str], label: str) -> None:
    counts = Counter(r["id"] for r in rows)
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"{label}: ids more than once: {twice}"
    assert set(counts) == set(expected), (
        f"{label}: missing {sorted(set(expected) - set(counts))}, "
        f"unexpected {sorted(set(counts) - set(expected))}"
    )
    for r in rows:
        want = expected[r["id"]]
        if want == "ok":
            assert r["error"] is None, f"{label}: {r['id']}: {r['error']}"
            assert r["lang"] == "en", f"{label}: {r['id']}: lang {r['lang']}"
            assert r["summary"], f"{label}: {r['id']}: no summary"
            es = r["translations"]["es"]
            assert es["title"] and es["title"].strip(), f"{label}: {r['id']}: no Spanish title"
            assert r["meta"]["models"]["es"], f"{label}: {r['id']}: no model recorded"
            assert r["meta"]["output_tokens"] > 0
        else:
            assert r["error"] is not None, f"{label}: {r['id']}: expected {want}"
            assert r["error"]["kind"] == want, f"{label}: {r['id']}: {r['error']}"
            assert r["error"]["line"] > 0


def run_job(spark, input_path: Path, out: Path, wrap=None):
    start = time.monotonic()
    df = tidings_spark.translate(
        spark, str(input_path), CONFIG, PARTITIONS, tidings=str(BINARY), wrap=wrap,
        extra_env={"RUST_LOG": "warn"},
    )
    df.write.mode("overwrite").parquet(str(out))
    rows = [r.asDict(recursive=True) for r in spark.read.parquet(str(out)).collect()]
    return rows, time.monotonic() - start


def main() -> int:
    if not NTREX.exists():
        if IN_CI:
            print(f"spark: {NTREX} is missing under CI", file=sys.stderr)
            return 1
        print(f"spark: skipped: {NTREX} not found", file=sys.stderr)
        return 0
    if not BINARY.exists():
        print(f"spark: {BINARY} not built; run `make build`", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    spark = tidings_spark.session("local[2,4]", app="tidings-spark-test")
    spark.sparkContext.setLogLevel("ERROR")
    print(f"spark: session up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="tidings-spark-") as tmp:
        tmp = Path(tmp)
        input_path = tmp / "in.jsonl"
        expected = write_input(input_path)
        plain = None

        def case(name, body):
            nonlocal passed, failed
            try:
                secs = body()
                passed += 1
                print(f"test {name} ... ok ({secs:.1f}s)", file=sys.stderr)
            except Exception:  # noqa: BLE001 - report and go on
                failed += 1
                print(f"test {name} ... FAILED", file=sys.stderr)
                traceback.print_exc()

        def every_record_exactly_once():
            nonlocal plain
            rows, secs = run_job(spark, input_path, tmp / "plain.parquet")
            check_output(rows, expected, "plain")
            plain = {r["id"]: r for r in rows}
            return secs

        def killed_task_is_retried_without_duplicates():
            print("spark: a task is killed on purpose now: the failure Spark logs is expected",
                  file=sys.stderr)
            marker = tmp / "marker"
            marker.mkdir()
            wrap = [sys.executable, str(HERE / "kill_once.py"), str(marker)]
            rows, secs = run_job(spark, input_path, tmp / "fault.parquet", wrap=wrap)
            assert (marker / "killed").exists(), "no task was killed"
            attempts = (marker / "attempts.log").read_text().split()
            assert len(attempts) == PARTITIONS + 1, f"{len(attempts)} pipe processes"
            check_output(rows, expected, "fault")
            if plain is not None:
                # Same partitions, same greedy decoding: the same records.
                for r in rows:
                    p = plain[r["id"]]
                    assert r["translations"] == p["translations"], r["id"]
                    assert r["summary"] == p["summary"], r["id"]
            return secs

        case("spark_pipe_every_record_exactly_once", every_record_exactly_once)
        case("spark_killed_task_is_retried_without_duplicates", killed_task_is_retried_without_duplicates)
    spark.stop()
    print(f"spark: {time.monotonic() - t0:.1f}s in all", file=sys.stderr)
    print(f"spark: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
