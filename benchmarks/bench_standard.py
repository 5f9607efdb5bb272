"""Speed and memory of ``q4 run`` against the seeds' approach and the I/O floor.

Usage (from the repo root; data is generated once under benchmarks/data/, git-ignored)::

    uv run python benchmarks/bench_standard.py                 # everything (2M x 16 CSV, 10M x 8 Parquet)
    uv run python benchmarks/bench_standard.py --rows 200000   # a quick, smaller run
    uv run python benchmarks/bench_standard.py --only speed|memory|full

Every contender runs as its own process, one after the other; wall time, CPU time and peak RSS
(``os.wait4`` on the child) are measured from outside. The table is printed as Markdown, and the
figures, parameters, machine, load average, commit and date go to benchmarks/results/bench_standard.json
(``--result`` for another path; ``--note`` records e.g. that the machine was shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from record import begin, write_result

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

SEEDS_APPROACH = textwrap.dedent(
    """
    import sys, pandas as pd, numpy as np
    from sklearn.preprocessing import StandardScaler
    from sklearn.decomposition import PCA
    src, out = sys.argv[1], sys.argv[2]
    df = pd.read_csv(src)
    X = df.select_dtypes("number").to_numpy()
    Z = StandardScaler().fit_transform(X)
    S = PCA(n_components=2).fit_transform(Z)
    keep = S[:, 1] >= 0
    keep = ((S[:, 0] >= 0) & (S[:, 1] >= 0)) | ((S[:, 0] >= 0) & (S[:, 1] < 0))
    df[keep].to_csv(out + "/Q_keep.csv", index=False)
    df[~keep].to_csv(out + "/Q_discard.csv", index=False)
    """
)

IO_FLOOR = textwrap.dedent(
    """
    import sys, pyarrow.csv as pcsv
    src, out = sys.argv[1], sys.argv[2]
    table = pcsv.read_csv(src)
    pcsv.write_csv(table, out + "/rows.csv")
    """
)


def generate_csv(path: Path, rows: int, cols: int, seed: int = 7) -> None:
    """Correlated Gaussian features, written in chunks with shortest round-trip floats."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols))
    tmp = path.with_suffix(".tmp")
    with pcsv.CSVWriter(str(tmp), pa.schema([(f"f{j:02d}", pa.float64()) for j in range(cols)])) as writer:
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            x = np.round(rng.standard_normal((n, cols)) @ mix, 6)  # ~9 characters a value: ~300 MB at 2M x 16
            writer.write_table(pa.table({f"f{j:02d}": x[:, j] for j in range(cols)}))
    tmp.rename(path)


def generate_parquet(path: Path, rows: int, cols: int, seed: int = 8) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols))
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(cols)])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            x = rng.standard_normal((n, cols)) @ mix
            writer.write_table(pa.table({f"f{j}": x[:, j] for j in range(cols)}), row_group_size=250_000)
    tmp.rename(path)


def measure(label: str, argv: list[str], out: Path, repeat: int = 1) -> dict[str, float | str]:
    """Run ``argv`` ``repeat`` times as a child process: median wall s, CPU s and peak RSS (MB)."""
    walls, cpus, rsss = [], [], []
    for _ in range(repeat):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        walls.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{label} failed with exit code {os.waitstatus_to_exitcode(status)}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rsss.append(usage.ru_maxrss / 1024)  # Linux: KiB
    result: dict[str, float | str] = {
        "label": label,
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "rss": max(rsss),
        "runs": repeat,
    }
    print(
        f"  {label:<44} {result['wall']:7.2f} s wall  {result['cpu']:7.2f} s CPU  "
        f"{result['rss']:6.0f} MB peak  (median of {repeat})",
        flush=True,
    )
    return result


def q4(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("q4")), "run", *args]


LIBRARIES = ("q4-pipeline", "numpy", "pyarrow", "scikit-learn", "pandas", "matplotlib")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the 16-column CSV")
    parser.add_argument("--parquet-rows", type=int, default=10_000_000, help="rows of the 8-column Parquet")
    parser.add_argument("--repeat", type=int, default=3, help="runs of q4 and the floor (median is kept)")
    parser.add_argument("--only", choices=("speed", "memory", "full"), action="append")
    parser.add_argument("--note", help="recorded in the result file, e.g. 'shared machine: ...'")
    parser.add_argument(
        "--result", type=Path, help="result file (default benchmarks/results/bench_standard.json)"
    )
    return parser.parse_args()


def run_speed(csv_path: Path, work: Path, repeat: int) -> dict[str, dict[str, float | str]]:
    """q4 standard interleaved with the I/O floor (median of ``repeat``), then the seeds' approach once."""
    floor_argv = [sys.executable, "-c", IO_FLOOR, str(csv_path), str(work / "floor")]
    q4_argv = q4(str(csv_path), "--out", str(work / "q4"), "--run-id", "bench")
    # interleave the repeats so a busy moment on the shared machine hits both alike
    floors, q4s = [], []
    for _ in range(repeat):
        floors.append(measure("I/O floor (pyarrow read_csv + write_csv)", floor_argv, work / "floor"))
        q4s.append(measure("q4 run --mode standard", q4_argv, work / "q4"))
    seeds_argv = [sys.executable, "-c", SEEDS_APPROACH, str(csv_path), str(work / "seeds")]
    return {
        "floor": _median(floors),
        "standard": _median(q4s),
        "seeds": measure("seeds' approach (pandas + sklearn)", seeds_argv, work / "seeds"),
    }


def run_full(
    csv_path: Path, work: Path, repeat: int, with_standard: bool
) -> dict[str, dict[str, float | str]]:
    """q4 full (median of ``repeat``), interleaved with q4 standard when ``with_standard``."""
    std_argv = q4(str(csv_path), "--out", str(work / "q4"), "--run-id", "bench")
    full_argv = q4(str(csv_path), "--out", str(work / "full"), "--run-id", "bench", "--mode", "full")
    stds, fulls = [], []
    for _ in range(repeat):  # interleaved with standard runs, like the floor
        if with_standard:
            stds.append(measure("q4 run --mode standard", std_argv, work / "q4"))
        fulls.append(measure("q4 run --mode full", full_argv, work / "full"))
    r = {"full": _median(fulls)}
    if stds:
        r["standard"] = _median(stds)
    return r


def targets(r: dict[str, dict[str, float | str]], parquet_rows: int) -> dict[str, dict[str, Any]]:
    """Each target that this run measured: its value, the bound and whether it was met."""

    def ratio(a: str, b: str) -> float:
        return round(float(r[a]["wall"]) / float(r[b]["wall"]), 3)

    out: dict[str, dict[str, Any]] = {}
    if "floor" in r:
        value = ratio("standard", "floor")
        out["standard_over_io_floor"] = {"value": value, "target": "<= 1.25", "met": value <= 1.25}
        value = ratio("seeds", "standard")
        out["seeds_over_standard"] = {"value": value, "target": ">= 5", "met": value >= 5}
    if "full" in r and "standard" in r:
        value = ratio("full", "standard")
        out["full_over_standard"] = {"value": value, "target": "<= 2", "met": value <= 2}
    if "parquet" in r:
        value = round(float(r["parquet"]["rss"]), 1)
        out["parquet_peak_rss_mb"] = {
            "value": value,
            "target": "< 400" + ("" if parquet_rows == 10_000_000 else " (set for 10,000,000 rows)"),
            "met": value < 400,
        }
    return out


def print_table(r: dict[str, dict[str, float | str]], met: dict[str, dict[str, Any]]) -> None:
    print()
    print("| run | wall (s) | CPU (s) | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for item in r.values():
        print(f"| {item['label']} | {item['wall']:.2f} | {item['cpu']:.2f} | {item['rss']:.0f} |")
    print()
    for name, target in met.items():
        print(
            f"{name}: {target['value']} (target {target['target']}: {'met' if target['met'] else 'NOT met'})"
        )


def main() -> None:
    args = parse_args()
    start = begin()
    only = set(args.only or ("speed", "memory", "full"))
    csv_path = DATA / f"bench_{args.rows}x16.csv"
    parquet_path = DATA / f"bench_{args.parquet_rows}x8.parquet"
    work = DATA / "work"
    machine = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in start["load_before"])
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load}")

    r: dict[str, dict[str, float | str]] = {}
    inputs: dict[str, dict[str, Any]] = {}
    if only & {"speed", "full"}:
        generate_csv(csv_path, args.rows, 16)
        inputs["csv"] = {
            "file": csv_path.name,
            "rows": args.rows,
            "columns": 16,
            "bytes": csv_path.stat().st_size,
        }
        print(f"input: {csv_path.name}, {csv_path.stat().st_size / 1e6:.0f} MB")
    if "speed" in only:
        r.update(run_speed(csv_path, work, args.repeat))
    if "full" in only:
        r.update(run_full(csv_path, work, args.repeat, with_standard="speed" not in only))
    if "memory" in only:
        generate_parquet(parquet_path, args.parquet_rows, 8)
        size = parquet_path.stat().st_size
        inputs["parquet"] = {
            "file": parquet_path.name,
            "rows": args.parquet_rows,
            "columns": 8,
            "bytes": size,
        }
        print(f"input: {parquet_path.name}, {size / 1e6:.0f} MB")
        pq_argv = q4(
            str(parquet_path), "--out", str(work / "pq"), "--run-id", "bench", "--output-format", "parquet"
        )
        r["parquet"] = measure("q4 run --mode standard, Parquet in/out", pq_argv, work / "pq")

    met = targets(r, args.parquet_rows)
    print_table(r, met)
    path = write_result(
        "bench_standard",
        parameters={
            "rows": args.rows,
            "parquet_rows": args.parquet_rows,
            "repeat": args.repeat,
            "only": sorted(only),
            "inputs": inputs,
        },
        figures={
            "runs": {key: _rounded(item) for key, item in r.items()},
            "targets": met,
            "units": {"wall": "s", "cpu": "s (user + sys)", "rss": "MB (peak)"},
        },
        start=start,
        libraries=LIBRARIES,
        note=args.note,
        path=args.result,
    )
    print(f"\nresult: {path}")


def _rounded(item: dict[str, float | str]) -> dict[str, float | str]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in item.items()}


def _median(results: list[dict[str, float | str]]) -> dict[str, float | str]:
    return {
        "label": results[0]["label"],
        "wall": statistics.median(float(x["wall"]) for x in results),
        "cpu": statistics.median(float(x["cpu"]) for x in results),
        "rss": max(float(x["rss"]) for x in results),
        "runs": len(results),
    }


if __name__ == "__main__":
    main()
