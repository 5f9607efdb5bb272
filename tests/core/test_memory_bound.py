"""Memory is bounded by the chunk size, not by the input size (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROBE = textwrap.dedent(
    """
    import json, sys, tracemalloc
    from pathlib import Path
    import numpy as np
    import pyarrow as pa
    from q4 import JobSpec, run_job
    import q4.outputs, q4.study, q4.tables
    pa.array(np.zeros(2))  # pyarrow imports pandas (if installed) on first use: not the run's memory
    src, out, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
    tracemalloc.start()
    run_job([Path(src)], Path(out), JobSpec(run_id="m", mode="enhanced", output_format=fmt, chunk_rows=2048))
    numpy_peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"numpy": numpy_peak, "arrow": pa.default_memory_pool().max_memory()}))
    """
)


def _peak(tmp_path, name: str, rows: int, fmt: str) -> tuple[int, int]:
    """(peak numpy + pyarrow bytes of a run, input file bytes)."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 6))
    table = pa.table({"id": [f"k{i}" for i in range(rows)], **{f"f{j}": x[:, j] for j in range(6)}})
    src = tmp_path / f"{name}.parquet"
    pq.write_table(table, src, row_group_size=10_000)
    if fmt == "csv_in":
        import pyarrow.csv as pcsv

        src = tmp_path / f"{name}.csv"
        pcsv.write_csv(table, src)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(src), str(tmp_path / name / "run=m"), "csv"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    peaks = json.loads(done.stdout)
    return int(peaks["numpy"] + peaks["arrow"]), src.stat().st_size


def test_parquet_peak_memory_does_not_grow_with_the_input(tmp_path):
    small, small_bytes = _peak(tmp_path, "small", 40_000, "parquet")
    large, large_bytes = _peak(tmp_path, "large", 400_000, "parquet")
    # holding the input (or anything per row) would grow by at least the extra input bytes
    assert large - small < 8_000_000 + 0.1 * (large_bytes - small_bytes), (small, large, large_bytes)


#: pyarrow's CSV reader keeps a bounded window of blocks read ahead (Python bytes objects when
#: read through the hashing file wrapper): up to ~40 MB, filled on the first tens of MB of input.
READAHEAD_WINDOW = 48_000_000


def test_csv_peak_memory_does_not_grow_with_the_input(tmp_path):
    small, small_bytes = _peak(tmp_path, "small", 40_000, "csv_in")
    large, large_bytes = _peak(tmp_path, "large", 800_000, "csv_in")  # ~100 MB of CSV
    assert large - small < READAHEAD_WINDOW + 0.1 * (large_bytes - small_bytes), (small, large, large_bytes)
