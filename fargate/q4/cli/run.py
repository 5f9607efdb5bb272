"""``q4 run INPUT... --out DIR``: the whole Q4 job locally, no AWS, written to ``DIR/run=<ID>/``.

Exit codes as the task: 0 succeeded, 2 bad input (ERROR.json written; for a run that is
already committed or failed, nothing is touched).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from q4.errors import InputError, Q4Error, RunStateError

RUN_ID_MAX = 64


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the Q4 job locally on CSV/Parquet files (no AWS)",
        description="Run the Q4 job locally: read INPUT (CSV or Parquet; several files are one table), "
        "split rows into signal (Q1+Q4) and noise (Q2+Q3), and write DIR/run=<ID>/ exactly as the "
        "pipeline does. Exit code 0 on success, 2 on bad input.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="CSV or Parquet file(s)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where run=<ID>/ is written")
    parser.add_argument(
        "--run-id", metavar="ID", help="run id (default: <UTC yyyymmdd-HHMMSS>-<first input's name>)"
    )
    parser.add_argument(
        "--mode",
        choices=("standard", "enhanced", "full"),
        default="standard",
        help="standard: split + energy; enhanced: + SVD and the model; full: + study, plots, report.html",
    )
    parser.add_argument(
        "--model", type=Path, metavar="FILE", help="apply this q4_model.json instead of fitting"
    )
    parser.add_argument(
        "--features", metavar="A,B", help="comma-separated feature columns (default: all numeric)"
    )
    parser.add_argument(
        "--svd-k", type=int, default=10, metavar="K", help="SVD components (1..1000, default 10)"
    )
    parser.add_argument(
        "--output-format", choices=("csv", "parquet"), default="csv", help="row outputs format"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=65_536,
        metavar="N",
        help="rows per chunk; memory is bounded by this, not by the input (default 65536)",
    )
    parser.set_defaults(handler=handle)


def default_run_id(first_input: Path, now: datetime | None = None) -> str:
    """``<UTC yyyymmdd-HHMMSS>-<input stem sanitized>``, at most 64 characters."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    stem = first_input.name.split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "input"
    stem = stem.replace("..", ".")
    return f"{stamp}-{stem}"[:RUN_ID_MAX].rstrip("-.")


def _features(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(
            "invalid_features", "--features is empty; name the feature columns, e.g. --features a,b."
        )
    return names


def handle(args: argparse.Namespace) -> int:
    from q4.job import JobSpec, run_job
    from q4.manifest import (
        ERROR_NAME,
        MANIFEST_NAME,
        build_error,
        build_manifest,
        write_error,
        write_manifest,
    )

    started = time.perf_counter()
    run_id = args.run_id or default_run_id(args.inputs[0])
    spec = JobSpec(
        run_id=run_id,
        mode=args.mode,
        features=_features(args.features),
        svd_k=args.svd_k,
        output_format=args.output_format,
        model_path=args.model,
        chunk_rows=args.chunk_rows,
    )
    spec.validate()
    run_dir = args.out / f"run={run_id}"
    for name in (MANIFEST_NAME, ERROR_NAME):
        if (run_dir / name).exists():
            state = "committed" if name == MANIFEST_NAME else "failed"
            raise RunStateError(
                "run_exists",
                f"{run_dir} already holds a {state} run ({name}); "
                "choose another --run-id or --out directory.",
                {"run_dir": str(run_dir)},
            )
    try:
        if run_dir.exists():  # leftovers of an interrupted run: clear them
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise InputError(
            "output_not_writable",
            f"Cannot write the run directory {run_dir} ({exc.strerror}); choose a writable --out directory.",
        ) from None
    names = [str(p) for p in args.inputs]
    try:
        result = run_job(args.inputs, run_dir, spec, progress=True, input_names=names)
    except Q4Error as exc:
        write_error(run_dir, build_error(run_id=run_id, error=exc, job=spec.to_job()))
        raise
    timings = {**result.timings, "total": time.perf_counter() - started}
    manifest = build_manifest(
        run_id=run_id,
        mode=spec.mode,
        job=spec.to_job(),
        inputs=result.input_objects(),
        artifacts=[a.to_dict() for a in result.artifacts],
        rows=result.rows,
        timings=timings,
        warnings=result.warnings,
    )
    write_manifest(run_dir, manifest)
    _summary(result, run_dir)
    return 0


def _summary(result: object, run_dir: Path) -> None:
    from q4.job import RunResult

    assert isinstance(result, RunResult)
    rows = result.rows
    print(
        f"q4: run {result.run_id} succeeded: {rows['input']:,} rows -> {rows['keep']:,} keep (Q1+Q4), "
        f"{rows['discard']:,} discard (Q2+Q3), {rows['rejected']:,} rejected."
    )
    print(f"q4: results in {run_dir}/ (MANIFEST.json lists every artifact)")
    if result.report is not None:
        print(f"q4: report: {result.report}")
    for warning in result.warnings:
        print(f"q4: warning: {warning['message']}", file=sys.stderr)
