"""How ``q4 run`` scales with cores, beside DuckDB doing the same job and the pyarrow read + write floor.

Usage (from the repo root; data is generated once under benchmarks/data/, git-ignored)::

    uv run python benchmarks/bench_scaling.py                    # 1, 2, 4, ... up to this machine's cores
    uv run python benchmarks/bench_scaling.py --cores 1,2 --rows 200000 --repeat 3
    uv run python benchmarks/bench_scaling.py --only csv/q4-standard --only csv/duckdb

Cases (``FORMAT/CONTENDER``), each on a CSV and on a Parquet file of ``--rows`` x ``--cols`` correlated
Gaussian floats (bench_standard.py's seeded generators):

- ``q4-standard``, ``q4-full``: ``q4 run --mode standard|full`` (Parquet input: ``--output-format parquet``);
- ``duckdb``: the standard job in DuckDB SQL. Pass 1 loads the file into a temporary table (as q4 spills
  a CSV to Arrow IPC) and takes the count, means and the population covariance matrix; numpy's ``eigh``
  of the correlation matrix gives the two projectors, signs fixed as q4 does (largest |entry| positive);
  pass 2 computes the scores and quadrants and COPYs the keep (Q1+Q4) and discard (Q2+Q3) rows, in
  input order, with q4's extra columns (q4_row, q4_quadrant, q4_score1, q4_score2), to CSV or Parquet
  (snappy), and tallies energy per quadrant into an er.json. What it does not do that q4 does: check
  rows (every generated row is valid, so no Q_rejected file), hash the input and outputs, write
  Q_study.json and MANIFEST.json, carry CSV values as the text read (DuckDB formats the doubles again);
- ``floor``: pyarrow reads the whole file and writes it back (``read_csv`` + ``write_csv``, or
  ``read_table`` + ``write_table``): no PCA, one output file.

For every core count N, each case runs as its own process pinned to the first N of this process's CPUs
(``os.sched_setaffinity``) with OMP/OPENBLAS/MKL/NUMEXPR/ARROW thread limits of N, pyarrow's CPU and I/O
pools set to N (``pa.set_cpu_count``, ``pa.set_io_thread_count``), ``Q4_CPUS=N`` (q4 sizes its worker
threads and pyarrow's pool from it; it would find N from the affinity mask anyway) and DuckDB's
``threads`` set to N. The children cannot import pandas (``q4.nopandas``, as in q4's own commands and the
task image): pyarrow would import it on its first ``pa.array`` where it is installed, as in a clone.
Every case first runs once, unmeasured, on a 1,000-row input (so bytecode is written and the libraries
are in the page cache). Wall time, CPU time (user + sys) and peak RSS come from ``os.wait4`` on the
child; with ``--repeat`` the cases are interleaved and the median kept. DuckDB's answer is checked
against q4's er.json of the same input (rows per quadrant equal, energies and fractions within 1e-9
relative) and the row numbers in its keep file against q4's. The table is printed as Markdown; the
figures, parameters, machine, load average, commit and date go to benchmarks/results/bench_scaling.json
(``--result`` for another path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeAlias

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
FORMATS = ("csv", "parquet")
CONTENDERS = ("q4-standard", "q4-full", "duckdb", "floor")
CASES = tuple(f"{fmt}/{who}" for fmt in FORMATS for who in CONTENDERS)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "Q4_CPUS")
ARROW_VARS = ("ARROW_IO_THREADS",)
#: DuckDB must agree with q4's er.json to this relative difference.
AGREEMENT_RTOL = 1e-9
LIBRARIES = ("q4-pipeline", "numpy", "pyarrow", "duckdb", "matplotlib")
#: ``{case: {cores: {wall, cpu, rss, runs, walls}}}``: medians, peak, run count, every run's wall time.
Runs: TypeAlias = dict[str, dict[str, dict[str, Any]]]
#: Rows of the inputs each case runs on once, unmeasured, before the measured runs.
WARM_UP_ROWS = 1000
#: Goals of issue #11 for q4 standard (wall time): speed-up over one core at 2 and 16 cores.
SPEEDUP_GOALS = {2: 1.8, 16: 10.0}
#: Issue #11's goal for Parquet: q4 standard's wall time at most this many times the floor's, any core count.
PARQUET_FLOOR_GOAL = 1.3


# ---------------------------------------------------------------- children (one process per case)


def child(argv: list[str]) -> int:
    """``_child CONTENDER FORMAT SRC OUT CORES [MODE]``: set the thread pools, then run one contender."""
    contender, fmt, src, out, cores = argv[0], argv[1], Path(argv[2]), Path(argv[3]), int(argv[4])
    from q4.nopandas import keep_pandas_out  # as q4's own commands: no pandas, as in the task image

    keep_pandas_out()
    import pyarrow as pa

    pa.set_cpu_count(cores)
    pa.set_io_thread_count(cores)
    if contender.startswith("q4-"):
        from q4.cli import main as q4_main

        args = ["run", str(src), "--out", str(out), "--run-id", "bench", "--mode", contender[3:]]
        return q4_main(args + (["--output-format", "parquet"] if fmt == "parquet" else []))
    if contender == "duckdb":
        duckdb_job(src, out, fmt, cores)
    else:
        floor_job(src, out, fmt)
    return 0


def floor_job(src: Path, out: Path, fmt: str) -> None:
    """pyarrow reads the whole file and writes it back: the I/O floor."""
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(pcsv.read_csv(src), out / "rows.csv")
    else:
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(src), out / "rows.parquet", compression="snappy")


def projectors(cov: Any) -> tuple[Any, Any, Any]:
    """Scale, constant mask and the two sign-fixed leading eigenvectors of the correlation matrix."""
    import numpy as np

    var = np.diag(cov).copy()
    constant = var == 0.0
    scale = np.where(constant, 1.0, np.sqrt(var))
    c = cov / np.outer(scale, scale)
    c[constant, :] = 0.0
    c[:, constant] = 0.0
    eigenvalues, vectors = np.linalg.eigh(0.5 * (c + c.T))
    p = vectors[:, np.argsort(eigenvalues, kind="stable")[::-1][:2]].T
    biggest = np.argmax(np.abs(p), axis=1)
    signs = np.sign(p[np.arange(2), biggest])
    return scale, constant, p * np.where(signs == 0, 1.0, signs)[:, None]


def _sql_double(x: float) -> str:
    return f"'{float(x)!r}'::DOUBLE"  # DuckDB parses the shortest round-trip text back to the same double


def duckdb_job(src: Path, out: Path, fmt: str, cores: int) -> None:
    """The standard job in DuckDB SQL (two passes over a temporary table); writes rows and er.json."""
    import duckdb
    import numpy as np

    con = duckdb.connect(config={"threads": cores, "preserve_insertion_order": True})
    reader = "read_csv" if fmt == "csv" else "read_parquet"
    con.execute(f"CREATE TEMP TABLE t AS SELECT * FROM {reader}(?)", [str(src)])
    cols = [row[0] for row in con.execute("DESCRIBE t").fetchall()]
    q = [f'"{c}"' for c in cols]
    d = len(cols)
    # pass 1: count, means, population covariances
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    aggregates = [f"avg({c})" for c in q] + [f"covar_pop({q[i]}, {q[j]})" for i, j in pairs]
    row = con.execute(f"SELECT count(*), {', '.join(aggregates)} FROM t").fetchone()
    assert row is not None
    mean = np.array(row[1 : 1 + d], dtype=np.float64)
    cov = np.zeros((d, d))
    for (i, j), value in zip(pairs, row[1 + d :], strict=True):
        cov[i, j] = cov[j, i] = value
    scale, constant, p = projectors(cov)
    # pass 2: scores, quadrants, row files and energy per quadrant
    z = {
        j: f"(({q[j]} - {_sql_double(mean[j])}) / {_sql_double(scale[j])})"
        for j in range(d)
        if not constant[j]
    }
    s1, s2 = (" + ".join(f"{z[j]} * {_sql_double(p[k, j])}" for j in z) for k in (0, 1))
    energy = " + ".join(f"{z[j]} * {z[j]}" for j in z)
    con.execute(
        f"""CREATE TEMP VIEW scored AS SELECT *, CASE WHEN q4_score1 >= 0
              THEN (CASE WHEN q4_score2 >= 0 THEN 1 ELSE 4 END)
              ELSE (CASE WHEN q4_score2 >= 0 THEN 2 ELSE 3 END) END::TINYINT AS q4_quadrant
            FROM (SELECT *, rowid AS q4_row, {s1} AS q4_score1, {s2} AS q4_score2, {energy} AS q4_energy
                  FROM t)"""
    )
    columns = ", ".join([*q, "q4_row", "q4_quadrant", "q4_score1", "q4_score2"])
    options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet, COMPRESSION snappy"
    for name, quadrants in (("Q_keep", "1, 4"), ("Q_discard", "2, 3")):
        target = out / f"{name}.{fmt}"
        con.execute(
            f"COPY (SELECT {columns} FROM scored WHERE q4_quadrant IN ({quadrants})) "
            f"TO '{target}' ({options})"
        )
    tally = con.execute(
        "SELECT q4_quadrant, count(*), sum(q4_energy), sum(q4_score1 * q4_score1 + q4_score2 * q4_score2) "
        "FROM scored GROUP BY q4_quadrant"
    ).fetchall()
    (out / "er.json").write_text(json.dumps(energy_document(tally), indent=2) + "\n")


def energy_document(tally: list[tuple[int, int, float, float]]) -> dict[str, Any]:
    """The part of q4's er.json that the comparison reads, from ``(quadrant, rows, energy, projected)``."""
    by_q = {f"Q{int(k)}": (int(rows), float(e), float(pe)) for k, rows, e, pe in tally}
    total = sum(e for _, e, _ in by_q.values())
    doc: dict[str, Any] = {"total_energy": total, "quadrants": {}}
    for name in ("Q1", "Q2", "Q3", "Q4"):
        rows, e, pe = by_q.get(name, (0, 0.0, 0.0))
        doc["quadrants"][name] = {"rows": rows, "energy": e, "fraction": e / total, "projected_energy": pe}
    for group, names in (("keep", ("Q1", "Q4")), ("discard", ("Q2", "Q3"))):
        e = sum(doc["quadrants"][n]["energy"] for n in names)
        rows = sum(doc["quadrants"][n]["rows"] for n in names)
        doc[group] = {"rows": rows, "energy": e, "fraction": e / total}
    return doc


# ---------------------------------------------------------------- the parent: runs, checks, table


def pinned(cpus: list[int]) -> dict[str, str]:
    """The environment of a child limited to ``len(cpus)`` threads.

    Without PYTHONDONTWRITEBYTECODE: the warm-up writes the bytecode of every module the contenders
    import, so no measured run spends its time compiling them.
    """
    n = str(len(cpus))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | dict.fromkeys(THREAD_VARS + ARROW_VARS, n) | {"MPLBACKEND": "Agg"}


def measure(case: str, src: Path, out: Path, cpus: list[int]) -> dict[str, float]:
    """Run one case in a child pinned to ``cpus``: wall s, CPU s (user + sys), peak RSS MB."""
    fmt, contender = case.split("/")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "_child", contender, fmt, str(src), str(out)]
    start = time.perf_counter()
    process = subprocess.Popen(
        [*argv, str(len(cpus))],
        env=pinned(cpus),
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # the parent runs no threads
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{case} on {len(cpus)} core(s) failed: exit code {os.waitstatus_to_exitcode(status)}"
        )
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}


def warm_up(cases: list[str], inputs: dict[str, Path], work: Path) -> None:
    """Run every case once, unmeasured, on small inputs: bytecode written, libraries in the page cache."""
    allowed = sorted(os.sched_getaffinity(0))
    for case in cases:
        fmt = case.split("/")[0]
        got = measure(case, inputs[fmt], work / "warm-up" / case.replace("/", "-"), allowed)
        print(f"  warm-up {case:<20} {got['wall']:8.2f} s wall", flush=True)


def run_all(cases: list[str], inputs: dict[str, Path], work: Path, cores: list[int], repeat: int) -> Runs:
    """``{case: {cores: {wall, cpu, rss, runs, walls}}}``, the repeats interleaved (median wall and CPU, each
    run's wall time in ``walls``)."""
    allowed = sorted(os.sched_getaffinity(0))
    runs: Runs = {case: {} for case in cases}
    for n in cores:
        samples: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
        for _ in range(repeat):
            for case in cases:
                fmt = case.split("/")[0]
                got = measure(case, inputs[fmt], work / case.replace("/", "-"), allowed[:n])
                samples[case].append(got)
                print(
                    f"  {case:<20} {n:3d} core(s) {got['wall']:8.2f} s wall {got['cpu']:8.2f} s CPU "
                    f"{got['rss']:7.0f} MB peak",
                    flush=True,
                )
        for case, got in samples.items():
            runs[case][str(n)] = {
                "wall": round(statistics.median(g["wall"] for g in got), 3),
                "cpu": round(statistics.median(g["cpu"] for g in got), 3),
                "rss": round(max(g["rss"] for g in got), 1),
                "runs": len(got),
                # every run's wall time, in order: how much the machine moved the median
                "walls": [round(g["wall"], 3) for g in got],
            }
    return runs


def _q4_output(work: Path, fmt: str) -> Path:
    return work / f"{fmt}-q4-standard" / "run=bench" / "output"


def agreement(work: Path, fmt: str) -> dict[str, Any]:
    """DuckDB's er.json and keep rows against q4 standard's, for one input format."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    q4_er = json.loads((_q4_output(work, fmt) / "er.json").read_text())
    duck_er = json.loads((work / f"{fmt}-duckdb" / "er.json").read_text())
    worst, rows_equal = 0.0, True
    for group in [*(("quadrants", q) for q in ("Q1", "Q2", "Q3", "Q4")), ("keep",), ("discard",)]:
        a, b = q4_er, duck_er
        for key in group:
            a, b = a[key], b[key]
        rows_equal = rows_equal and a["rows"] == b["rows"]
        for key in ("energy", "fraction", "projected_energy"):
            if key in a:
                worst = max(worst, abs(a[key] - b[key]) / max(abs(a[key]), 1e-300))

    def keep_rows(path: Path) -> list[int]:
        if fmt == "csv":
            options = pcsv.ConvertOptions(include_columns=["q4_row"])
            return pcsv.read_csv(path, convert_options=options).column("q4_row").to_pylist()
        return pq.read_table(path, columns=["q4_row"]).column("q4_row").to_pylist()

    same_rows = keep_rows(_q4_output(work, fmt) / f"Q_keep.{fmt}") == keep_rows(
        work / f"{fmt}-duckdb" / f"Q_keep.{fmt}"
    )
    return {
        "max_relative_difference": worst,
        "rows_per_quadrant_equal": rows_equal,
        "keep_rows_identical": same_rows,
        "rtol": AGREEMENT_RTOL,
        "agree": rows_equal and same_rows and worst <= AGREEMENT_RTOL,
    }


def ratios(runs: Runs, cores: list[int]) -> dict[str, Any]:
    """Speed-up over one core per case, DuckDB's and the floor's wall time over q4 standard's."""
    speedup: dict[str, dict[str, float]] = {}
    for case, by_n in runs.items():
        if "1" in by_n:
            speedup[case] = {k: round(by_n["1"]["wall"] / v["wall"], 3) for k, v in by_n.items()}
    versus: dict[str, dict[str, dict[str, float]]] = {}
    for fmt in FORMATS:
        q4 = runs.get(f"{fmt}/q4-standard", {})
        for other in ("duckdb", "floor"):
            theirs = runs.get(f"{fmt}/{other}", {})
            shared = [str(n) for n in cores if str(n) in q4 and str(n) in theirs]
            if shared:
                versus.setdefault(fmt, {})[f"{other}_over_q4_standard"] = {
                    k: round(theirs[k]["wall"] / q4[k]["wall"], 3) for k in shared
                }
    return {"speedup_over_1_core": speedup, "wall_ratio": versus}


def goals(runs: Runs, r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue #11's goals for q4 standard that this run measured: value, target, met."""
    out: dict[str, dict[str, Any]] = {}
    for fmt in FORMATS:
        speedup = r["speedup_over_1_core"].get(f"{fmt}/q4-standard", {})
        for n, bound in SPEEDUP_GOALS.items():
            if str(n) in speedup:
                value = speedup[str(n)]
                out[f"{fmt}_standard_speedup_{n}_cores"] = {
                    "value": value,
                    "target": f">= {bound}",
                    "met": value >= bound,
                }
        q4, floor = runs.get(f"{fmt}/q4-standard", {}), runs.get(f"{fmt}/floor", {})
        shared = [n for n in q4 if n in floor]
        if shared and fmt == "parquet":
            over = {n: round(q4[n]["wall"] / floor[n]["wall"], 3) for n in shared}
            out[f"{fmt}_standard_over_floor"] = {
                "value": over,
                "target": f"q4's wall / the floor's <= {PARQUET_FLOOR_GOAL} at every core count",
                "met": all(v <= PARQUET_FLOOR_GOAL for v in over.values()),
            }
        duck = r["wall_ratio"].get(fmt, {}).get("duckdb_over_q4_standard")
        if duck:
            out[f"{fmt}_standard_ahead_of_duckdb"] = {
                "value": duck,
                "target": "DuckDB's wall / q4's > 1 at every core count",
                "met": all(v > 1 for v in duck.values()),
            }
    return out


def print_table(runs: Runs, r: dict[str, Any]) -> None:
    print()
    print("| case | cores | wall (s) | CPU (s) | peak RSS (MB) | speed-up over 1 core |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for case, by_n in runs.items():
        for n, got in by_n.items():
            speedup = r["speedup_over_1_core"].get(case, {}).get(n)
            shown = f"{speedup:.2f}" if speedup is not None else "-"
            print(f"| {case} | {n} | {got['wall']:.2f} | {got['cpu']:.2f} | {got['rss']:.0f} | {shown} |")
    print()


def default_cores() -> list[int]:
    """1, 2, 4, ... up to the CPUs this process may use, and that count itself."""
    available = len(os.sched_getaffinity(0))
    counts = [1 << k for k in range(available.bit_length()) if 1 << k <= available]
    return counts if counts[-1] == available else [*counts, available]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of both inputs")
    parser.add_argument("--cols", type=int, default=16, help="float columns of both inputs")
    parser.add_argument("--cores", help="comma-separated core counts (default 1, 2, 4, ... up to all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case per core count (median)")
    parser.add_argument("--only", choices=CASES, action="append", help="a case to run (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="inputs and the work dir")
    parser.add_argument("--note", help="recorded in the result file, e.g. 'shared machine: ...'")
    parser.add_argument(
        "--result", type=Path, help="result file (default benchmarks/results/bench_scaling.json)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench_standard import generate_csv, generate_parquet
    from record import begin, write_result

    start = begin()
    cores = [int(n) for n in args.cores.split(",")] if args.cores else default_cores()
    if max(cores) > len(os.sched_getaffinity(0)) or min(cores) < 1:
        raise SystemExit(f"--cores: this process may use {len(os.sched_getaffinity(0))} CPUs")
    cases = [case for case in CASES if not args.only or case in args.only]
    inputs = {
        "csv": args.data_dir / f"bench_{args.rows}x{args.cols}.csv",
        "parquet": args.data_dir / f"bench_{args.rows}x{args.cols}.parquet",
    }
    small = {fmt: args.data_dir / f"bench_{WARM_UP_ROWS}x{args.cols}.{fmt}" for fmt in FORMATS}
    for make, fmt in ((generate_csv, "csv"), (generate_parquet, "parquet")):
        make(inputs[fmt], args.rows, args.cols)
        make(small[fmt], WARM_UP_ROWS, args.cols)
    load = ", ".join(f"{x:.2f}" for x in start["load_before"])
    print(f"cores {cores}, {args.rows:,} rows x {args.cols} columns, load average {load}", flush=True)
    work = args.data_dir / "work-scaling"
    warm_up(cases, small, work)
    runs = run_all(cases, inputs, work, cores, args.repeat)
    checks = {
        fmt: agreement(work, fmt)
        for fmt in FORMATS
        if f"{fmt}/q4-standard" in cases and f"{fmt}/duckdb" in cases
    }
    r = ratios(runs, cores)
    met = goals(runs, r)
    print_table(runs, r)
    for fmt, check in checks.items():
        print(f"DuckDB vs q4 ({fmt}): {check}")
    for name, goal in met.items():
        print(f"{name}: {goal['value']} (goal {goal['target']}: {'met' if goal['met'] else 'NOT met'})")
    path = write_result(
        "bench_scaling",
        start=start,
        parameters={
            "rows": args.rows,
            "cols": args.cols,
            "cores": cores,
            "repeat": args.repeat,
            "warm_up_rows": WARM_UP_ROWS,
            "cases": cases,
            "inputs": {fmt: {"file": p.name, "bytes": p.stat().st_size} for fmt, p in inputs.items()},
        },
        figures={
            "runs": runs,
            **r,
            "duckdb_agreement": checks,
            "goals": met,
            "units": {"wall": "s", "cpu": "s (user + sys)", "rss": "MB (peak)"},
        },
        libraries=LIBRARIES,
        note=args.note,
        path=args.result,
    )
    print(f"\nresult: {path}")
    return 0 if all(check["agree"] for check in checks.values()) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
