"""benchmarks/bench_scaling.py at a tiny size on one core: the result file's shape, and DuckDB doing the
same job as q4 (the energy split of er.json, and the very rows and values of the keep and discard files).

The figures themselves are the benchmark's business (docs/benchmarks.md); this runs the real script as a
user does, each case in its own pinned process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CASES = (
    "csv/q4-standard",
    "csv/duckdb",
    "csv/floor",
    "parquet/q4-standard",
    "parquet/duckdb",
    "parquet/floor",
)
ROWS = 3000


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("scaling")
    result = base / "bench_scaling.json"
    only = [arg for case in CASES for arg in ("--only", case)]
    size = ["--rows", str(ROWS), "--cols", "5", "--cores", "1"]
    paths = ["--data-dir", str(base), "--result", str(result), "--note", "test"]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_scaling.py"), *size, *paths, *only],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| csv/duckdb | 1 |" in done.stdout  # the Markdown table
    return json.loads(result.read_text()), base / "work-scaling"


def test_result_file_shape(bench: tuple[dict, Path]) -> None:
    doc, _ = bench
    assert doc["benchmark"] == "bench_scaling" and doc["note"] == "test"
    assert doc["parameters"]["rows"] == ROWS and doc["parameters"]["cores"] == [1]
    assert doc["parameters"]["cases"] == list(CASES)
    assert set(doc["parameters"]["inputs"]) == {"csv", "parquet"}
    figures = doc["figures"]
    assert set(figures["runs"]) == set(CASES)
    for case in CASES:
        got = figures["runs"][case]["1"]
        assert got["wall"] > 0 and got["cpu"] > 0 and got["rss"] > 0 and got["runs"] == 1, case
        assert got["walls"] == [got["wall"]], case
        assert figures["speedup_over_1_core"][case] == {"1": 1.0}
    assert set(figures["wall_ratio"]["csv"]) == {"duckdb_over_q4_standard", "floor_over_q4_standard"}
    assert set(figures["wall_ratio"]["parquet"]) == {"duckdb_over_q4_standard", "floor_over_q4_standard"}
    assert figures["goals"]["csv_standard_ahead_of_duckdb"]["value"].keys() == {"1"}
    over = figures["goals"]["parquet_standard_over_floor"]
    runs = figures["runs"]
    assert over["value"] == {
        "1": round(runs["parquet/q4-standard"]["1"]["wall"] / runs["parquet/floor"]["1"]["wall"], 3)
    }
    assert over["met"] == (over["value"]["1"] <= 1.3)
    assert doc["machine"]["libraries"]["duckdb"] and doc["load_average"]["after"]
    assert doc["git"]["commit"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_duckdb_agrees_with_q4(bench: tuple[dict, Path], fmt: str) -> None:
    doc, _ = bench
    check = doc["figures"]["duckdb_agreement"][fmt]
    assert check["agree"] and check["rows_per_quadrant_equal"] and check["keep_rows_identical"]
    assert check["max_relative_difference"] <= 1e-9


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("name", ["Q_keep", "Q_discard"])
def test_duckdb_writes_the_rows_q4_writes(bench: tuple[dict, Path], fmt: str, name: str) -> None:
    _, work = bench

    def read(path: Path) -> pa.Table:
        return pcsv.read_csv(path) if fmt == "csv" else pq.read_table(path)

    q4 = read(work / f"{fmt}-q4-standard" / "run=bench" / "output" / f"{name}.{fmt}")
    duck = read(work / f"{fmt}-duckdb" / f"{name}.{fmt}")
    assert duck.column_names == q4.column_names
    assert 0 < duck.num_rows == q4.num_rows < ROWS
    for column in q4.column_names:
        mine, theirs = duck.column(column).to_pylist(), q4.column(column).to_pylist()
        if column.startswith("q4_score"):
            assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-9, column
        else:  # row numbers, quadrants and the input values themselves
            assert mine == theirs, column
