"""One input through a local stack at 1, 2, 4 and 8 shards: where the time of a sharded run goes.

    uv run python benchmarks/bench_shards.py                          # 1M x 16 CSV, shards 1,2,4,8
    uv run python benchmarks/bench_shards.py --rows 200000 --shards 1,3 --result /tmp/s.json

It brings a local stack up in its own state dir (``q4 local up --detach --max-tasks M``, reused when up),
uploads one CSV table once, and runs it as a separate run per shard count (the same object copied under
each run's input prefix; a work message with ``shards``). For each run it records the wall time from the
work message to MANIFEST.json, and per step (pass1, pass2, finish) the span from its first launch record to
its last partial (finish: to MANIFEST.json), from the objects' own times. It also times `q4 run` in one
process on the same table, unsharded and with ``--shards N`` (the computation's own cost, without the
stack). It checks that every shard count gives the one-task answer (rows per quadrant equal, er.json
within 1e-12) and writes the figures with the machine and date to benchmarks/results/bench_shards.json.

On this machine every "Fargate task" is a local process on the same cores, so more shards cannot run
faster than the cores allow: the figures show the per-step overhead (process start, reading the partials,
assembly), not Fargate's scaling; docs/scale.md puts them beside Fargate's launch latency.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from load import REPO, clients, stack_down, stack_up
from q4_contract import shards as plan_rules


def make_table(rows: int, cols: int, seed: int) -> bytes:
    """A CSV of ``rows`` x ``cols`` correlated floats (the benchmarks' usual shape)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, 4))
    mix = rng.standard_normal((4, cols))
    data = base @ mix + 0.3 * rng.standard_normal((rows, cols))
    table = pa.table({f"f{j}": data[:, j] for j in range(cols)})
    sink = io.BytesIO()
    pcsv.write_csv(table, sink)
    return sink.getvalue()


def _wait(s3: Any, bucket: str, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in ("MANIFEST.json", "ERROR.json"):
            try:
                body = s3.get_object(Bucket=bucket, Key=f"run={run_id}/{name}")["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
            doc: dict[str, Any] = json.loads(body)
            if name == "ERROR.json":
                raise SystemExit(f"run {run_id} failed: {doc.get('code')}: {doc.get('message')}")
            return doc
        time.sleep(0.5)
    raise SystemExit(f"run {run_id} did not end within {timeout:.0f} s")


def _times(s3: Any, bucket: str, prefix: str) -> dict[str, float]:
    """LastModified (epoch seconds) of every object under ``prefix``, by key."""
    found: dict[str, float] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["LastModified"].timestamp()
    return found


def step_spans(s3: Any, bucket: str, run_id: str) -> dict[str, float]:
    """Seconds from each step's first launch record to its last partial (finish: MANIFEST.json)."""
    objects = _times(s3, bucket, f"run={run_id}/")
    spans: dict[str, float] = {}
    for step in plan_rules.STEPS:
        starts = [t for k, t in objects.items() if f"/shards/{step}/" in k and "/attempts/" in k]
        ends = (
            [t for k, t in objects.items() if f"/shards/{step}/" in k and k.endswith("/partial.json")]
            if step != plan_rules.FINISH
            else [objects.get(f"run={run_id}/MANIFEST.json", 0.0)]
        )
        if starts and ends:
            spans[step] = round(max(ends) - min(starts), 2)
    return spans


def _er(s3: Any, bucket: str, run_id: str) -> dict[str, Any]:
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=f"run={run_id}/output/er.json")["Body"].read()))


def agrees(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Same rows per quadrant and energies within 1e-12 (relative)."""
    for name in ("Q1", "Q2", "Q3", "Q4", "keep", "discard"):
        a, b = one.get(name) or {}, other.get(name) or {}
        if a.get("rows") != b.get("rows"):
            return False
        for key, value in a.items():
            if isinstance(value, float) and abs(value - b[key]) > 1e-12 * max(1.0, abs(value)):
                return False
    return True


def local_runs(body: bytes, counts: list[int], mode: str) -> dict[str, float]:
    """Seconds of `q4 run` (one process, no AWS) on the same table, unsharded and with ``--shards N``: the
    sharded computation's own cost (re-reading the slices, merging partials, assembling), without the
    stack's launches and the emulator's I/O."""
    import subprocess
    import tempfile

    from load import Q4

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="q4-bench-shards-") as tmp:
        src = Path(tmp) / "table.csv"
        src.write_bytes(body)
        for n in [0, *counts]:
            out = Path(tmp) / f"out{n}"
            args = [Q4, "run", str(src), "--out", str(out), "--mode", mode]
            clock = time.monotonic()
            subprocess.run([*args, *(["--shards", str(n)] if n else [])], check=True, capture_output=True)
            timings["unsharded" if n == 0 else str(n)] = round(time.monotonic() - clock, 2)
    return timings


def main(argv: list[str] | None = None) -> int:
    from record import begin, write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--shards", default="1,2,4,8")
    parser.add_argument("--mode", default="standard")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".q4" / "bench-shards")
    parser.add_argument("--max-tasks", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--note")
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.shards.split(",")]
    start = begin()
    body = make_table(args.rows, args.cols, seed=7)
    in_process = local_runs(body, counts, args.mode)
    print(f"q4 run (one process): {in_process}", file=sys.stderr)
    aws, started = stack_up(args.state_dir.resolve(), args.max_tasks)
    try:
        s3, sqs = clients(aws)["s3"], clients(aws)["sqs"]
        archive, artifacts = aws["Q4_ARCHIVE_BUCKET"], aws["Q4_ARTIFACTS_BUCKET"]
        stamp = uuid.uuid4().hex[:6]
        first_key = f"run=bench-shards-{stamp}-src/input/table.csv"
        s3.put_object(Bucket=archive, Key=first_key, Body=body)
        runs: dict[int, dict[str, Any]] = {}
        for n in counts:
            run_id = f"bench-shards-{stamp}-{n}"
            key = f"run={run_id}/input/table.csv"
            s3.copy_object(Bucket=archive, Key=key, CopySource={"Bucket": archive, "Key": first_key})
            message = {"run_id": run_id, "input_key": key, "mode": args.mode, "shards": n}
            clock = time.monotonic()
            sqs.send_message(QueueUrl=aws["Q4_WORK_QUEUE_URL"], MessageBody=json.dumps(message))
            manifest = _wait(s3, artifacts, run_id, args.timeout)
            wall = time.monotonic() - clock
            runs[n] = {
                "run_id": run_id,
                "shards": (manifest.get("sharding") or {}).get("shards", 1),
                "wall_s": round(wall, 2),
                "steps_s": step_spans(s3, artifacts, run_id),
                "rows": manifest["rows"],
            }
            print(f"shards {n}: {wall:.1f} s  {runs[n]['steps_s']}", file=sys.stderr)
        reference = _er(s3, artifacts, runs[counts[0]]["run_id"])
        for n in counts:
            runs[n]["agrees_with_first"] = agrees(reference, _er(s3, artifacts, runs[n]["run_id"]))
    finally:
        if started and not args.keep:
            stack_down(args.state_dir.resolve())
    figures = {
        "input_bytes": len(body),
        "runs": {str(n): r for n, r in runs.items()},
        "q4_run_in_one_process_s": in_process,
    }
    print(json.dumps(figures, indent=1))
    path = write_result(
        "bench_shards",
        parameters={"rows": args.rows, "cols": args.cols, "mode": args.mode, "max_tasks": args.max_tasks},
        figures=figures,
        start=start,
        libraries=("q4-pipeline", "numpy", "pyarrow", "moto"),
        note=args.note,
        path=args.result,
    )
    print(f"bench_shards: result in {path}", file=sys.stderr)
    return 0 if all(r["agrees_with_first"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
