"""Speed and memory of ``q4 run`` against the seeds' approach and the I/O floor.

Usage (from the repo root; data is generated once under benchmarks/data/, git-ignored)::

    uv run python benchmarks/bench_standard.py                 # everything (SPEC sizes)
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


def measure(label: str, argv: list[str], out: Path) -> dict[str, float | str]:
    """Run ``argv`` as a child process; wall seconds and the child's peak RSS in MB."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{label} failed with exit code {child.returncode}")
    rss = usage.ru_maxrss / 1024  # Linux: KiB
    print(f"  {label:<40} {wall:8.2f} s   peak RSS {rss:8.0f} MB", flush=True)
    return {"label": label, "wall": wall, "rss": rss}


def q4(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("q4")), "run", *args]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--parquet-rows", type=int, default=10_000_000)
    parser.add_argument("--only", choices=("speed", "memory", "full"), action="append")
    args = parser.parse_args()
    only = set(args.only or ("speed", "memory", "full"))
    csv_path = DATA / f"bench_{args.rows}x16.csv"
    parquet_path = DATA / f"bench_{args.parquet_rows}x8.parquet"
    work = DATA / "work"
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}")

    results = []
    if only & {"speed", "full"}:
        generate_csv(csv_path, args.rows, 16)
        print(f"input: {csv_path.name}, {csv_path.stat().st_size / 1e6:.0f} MB")
    if "speed" in only:
        results.append(
            measure(
                "I/O floor (pyarrow read_csv + write_csv)",
                [sys.executable, "-c", IO_FLOOR, str(csv_path), str(work / "floor")],
                work / "floor",
            )
        )
        results.append(
            measure(
                "q4 run --mode standard",
                q4(str(csv_path), "--out", str(work / "q4"), "--run-id", "bench"),
                work / "q4",
            )
        )
        results.append(
            measure(
                "seeds' approach (pandas + sklearn)",
                [sys.executable, "-c", SEEDS_APPROACH, str(csv_path), str(work / "seeds")],
                work / "seeds",
            )
        )
    if "full" in only:
        results.append(
            measure(
                "q4 run --mode full",
                q4(str(csv_path), "--out", str(work / "full"), "--run-id", "bench", "--mode", "full"),
                work / "full",
            )
        )
    if "memory" in only:
        generate_parquet(parquet_path, args.parquet_rows, 8)
        print(f"input: {parquet_path.name}, {parquet_path.stat().st_size / 1e6:.0f} MB")
        results.append(
            measure(
                "q4 run --mode standard, Parquet in/out",
                q4(
                    str(parquet_path),
                    "--out",
                    str(work / "pq"),
                    "--run-id",
                    "bench",
                    "--output-format",
                    "parquet",
                ),
                work / "pq",
            )
        )
    print()
    print("| run | wall (s) | peak RSS (MB) |")
    print("| --- | ---: | ---: |")
    for r in results:
        print(f"| {r['label']} | {r['wall']:.2f} | {r['rss']:.0f} |")


if __name__ == "__main__":
    main()
