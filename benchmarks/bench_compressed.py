"""How much slower ``q4 run`` is on compressed CSV (.csv.gz, .csv.bz2, .csv.zst) than on the plain file.

Usage (from the repo root; data is generated once under benchmarks/data/, git-ignored)::

    uv run python benchmarks/bench_compressed.py                  # 500k x 16 CSV, gzip + zstd + bzip2
    uv run python benchmarks/bench_compressed.py --rows 100000 --codec gzip

The same table (bench_standard's generator) is run as ``q4 run --mode standard`` plain and compressed,
the runs interleaved (median of ``--repeat``); each codec's decompression alone (pyarrow's stream, read
to its end on one thread) is timed too, so the result says how much of the extra time is decompressing.
A compressed file is one stream: it decompresses on one core while pyarrow parses the blocks it hands
over on the others. Figures go to benchmarks/results/bench_compressed.json (``--result`` for another path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from bench_standard import DATA, LIBRARIES, generate_csv, measure, q4
from record import begin, write_result

SUFFIXES = {"gzip": ".csv.gz", "zstd": ".csv.zst", "bz2": ".csv.bz2"}


def compressed(plain: Path, codec: str) -> Path:
    """``plain`` compressed with pyarrow's codec at its default level (written once)."""
    path = plain.with_name(plain.name.removesuffix(".csv") + SUFFIXES[codec])
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        with pa.input_stream(str(plain)) as src, pa.output_stream(str(tmp), compression=codec) as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        tmp.rename(path)
    return path


def decompress_seconds(path: Path, codec: str, repeat: int) -> float:
    """Median seconds to decompress ``path`` to its end (4 MiB reads, nothing kept)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with pa.input_stream(str(path), compression=codec) as stream:
            while stream.read(1 << 22):
                pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the 16-column CSV")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each input (median is kept)")
    parser.add_argument("--codec", choices=tuple(SUFFIXES), action="append")
    parser.add_argument("--note", help="recorded in the result file, e.g. 'shared machine: ...'")
    parser.add_argument("--result", type=Path, help="default benchmarks/results/bench_compressed.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = begin()
    codecs = args.codec or list(SUFFIXES)
    plain = DATA / f"bench_{args.rows}x16.csv"
    generate_csv(plain, args.rows, 16)
    files = {"plain": plain, **{codec: compressed(plain, codec) for codec in codecs}}
    work = DATA / "work"
    runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in files}
    for _ in range(args.repeat):  # interleaved: a busy moment on a shared machine hits every input alike
        for name, path in files.items():
            argv = q4(str(path), "--out", str(work / "c"), "--run-id", "bench")
            runs[name].append(measure(f"q4 run --mode standard, {path.name}", argv, work / "c"))
    figures: dict[str, Any] = {"inputs": {}, "runs": {}, "decompress_only": {}, "slower_than_plain": {}}
    for name, path in files.items():
        figures["inputs"][name] = {"file": path.name, "bytes": path.stat().st_size}
        figures["runs"][name] = {
            "wall": round(statistics.median(float(r["wall"]) for r in runs[name]), 3),
            "cpu": round(statistics.median(float(r["cpu"]) for r in runs[name]), 3),
            "rss": round(max(float(r["rss"]) for r in runs[name]), 1),
            "runs": len(runs[name]),
        }
    base = figures["runs"]["plain"]["wall"]
    print("\n| input | bytes | wall (s) | CPU (s) | peak RSS (MB) | x plain | decompress alone (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in files:
        run = figures["runs"][name]
        ratio = round(run["wall"] / base, 3)
        alone = "" if name == "plain" else round(decompress_seconds(files[name], name, args.repeat), 3)
        if name != "plain":
            figures["slower_than_plain"][name] = ratio
            figures["decompress_only"][name] = alone
        size = figures["inputs"][name]["bytes"]
        cells = [files[name].name, f"{size:,}", run["wall"], run["cpu"], run["rss"], ratio, alone]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    figures["units"] = {"wall": "s", "cpu": "s (user + sys)", "rss": "MB (peak)", "slower_than_plain": "x"}
    path = write_result(
        "bench_compressed",
        start=start,
        parameters={"rows": args.rows, "columns": 16, "repeat": args.repeat, "codecs": codecs},
        figures=figures,
        libraries=LIBRARIES,
        note=args.note,
        path=args.result,
    )
    print(f"\nresult: {path}")


if __name__ == "__main__":
    sys.exit(main())
