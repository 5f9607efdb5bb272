"""Speed and memory of ``q4 run`` against the seeds' approach and the I/O floor.

Usage (from the repo root; data is generated once under benchmarks/data/, git-ignored)::

    uv run python benchmarks/bench_standard.py                 # everything (the default sizes)
    uv run python benchmarks/bench_standard.py --rows 200000   # a quick, smaller run
    uv run python benchmarks/bench_standard.py --only speed|memory|full

Every contender runs as its own process, one after the other; wall time and peak RSS
(``ru_maxrss`` of the child) are measured from outside. Results are printed as a
Markdown table for docs/benchmarks.md.
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

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--parquet-rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of q4 and the floor (median is kept)")
    parser.add_argument("--only", choices=("speed", "memory", "full"), action="append")
    args = parser.parse_args()
    only = set(args.only or ("speed", "memory", "full"))
    csv_path = DATA / f"bench_{args.rows}x16.csv"
    parquet_path = DATA / f"bench_{args.parquet_rows}x8.parquet"
    work = DATA / "work"
    machine = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load}")

    r: dict[str, dict[str, float | str]] = {}
    if only & {"speed", "full"}:
        generate_csv(csv_path, args.rows, 16)
        print(f"input: {csv_path.name}, {csv_path.stat().st_size / 1e6:.0f} MB")
    if "speed" in only:
        floor_argv = [sys.executable, "-c", IO_FLOOR, str(csv_path), str(work / "floor")]
        q4_argv = q4(str(csv_path), "--out", str(work / "q4"), "--run-id", "bench")
        # interleave the repeats so a busy moment on the shared machine hits both alike
        floors, q4s = [], []
        for _ in range(args.repeat):
            floors.append(measure("I/O floor (pyarrow read_csv + write_csv)", floor_argv, work / "floor"))
            q4s.append(measure("q4 run --mode standard", q4_argv, work / "q4"))
        r["floor"] = _median(floors)
        r["standard"] = _median(q4s)
        seeds_argv = [sys.executable, "-c", SEEDS_APPROACH, str(csv_path), str(work / "seeds")]
        r["seeds"] = measure("seeds' approach (pandas + sklearn)", seeds_argv, work / "seeds")
    if "full" in only:
        std_argv = q4(str(csv_path), "--out", str(work / "q4"), "--run-id", "bench")
        full_argv = q4(str(csv_path), "--out", str(work / "full"), "--run-id", "bench", "--mode", "full")
        stds, fulls = [], []
        for _ in range(args.repeat):  # interleaved with standard runs, like the floor above
            if "speed" not in only:
                stds.append(measure("q4 run --mode standard", std_argv, work / "q4"))
            fulls.append(measure("q4 run --mode full", full_argv, work / "full"))
        if stds:
            r["standard"] = _median(stds)
        r["full"] = _median(fulls)
    if "memory" in only:
        generate_parquet(parquet_path, args.parquet_rows, 8)
        print(f"input: {parquet_path.name}, {parquet_path.stat().st_size / 1e6:.0f} MB")
        pq_argv = q4(
            str(parquet_path), "--out", str(work / "pq"), "--run-id", "bench", "--output-format", "parquet"
        )
        r["parquet"] = measure("q4 run --mode standard, Parquet in/out", pq_argv, work / "pq")

    print()
    print("| run | wall (s) | CPU (s) | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for item in r.values():
        print(f"| {item['label']} | {item['wall']:.2f} | {item['cpu']:.2f} | {item['rss']:.0f} |")
    print()

    def ratio(a: str, b: str) -> float:
        return float(r[a]["wall"]) / float(r[b]["wall"])

    if "floor" in r:
        print(f"q4 standard / I/O floor: {ratio('standard', 'floor'):.2f}x (target <= 1.25)")
        print(f"seeds / q4 standard: {ratio('seeds', 'standard'):.1f}x (target >= 5)")
    if "full" in r and "standard" in r:
        print(f"q4 full / q4 standard: {ratio('full', 'standard'):.2f}x (target <= 2)")
    if "parquet" in r:
        print(f"Parquet 10M x 8 peak RSS: {float(r['parquet']['rss']):.0f} MB (target < 400)")


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
