"""Writers for the row outputs: Q_keep, Q_discard, Q_rejected and svd_scores, as CSV or Parquet.

Rows arrive chunk by chunk in input order and are written at once (memory stays bounded by
the chunk size). CSV values are written by pyarrow: text exactly as read, floats in their
shortest round-trip form (a float written parses back to the same double).
"""

from __future__ import annotations

import csv
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

CONTENT_TYPES = {
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".png": "image/png",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


#: Chunks at least this long are formatted in two halves in parallel.
SPLIT_ROWS = 8192
_PLAIN = pcsv.WriteOptions(include_header=False, quoting_style="none")
_QUOTED = pcsv.WriteOptions(include_header=False, quoting_style="needed")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _formatter() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="q4-csv-format")
        return _pool


def _format_csv(batch: pa.RecordBatch) -> bytes:
    """CSV text of rows (no header): unquoted when possible, else pyarrow's "needed" quoting."""
    buffer = io.BytesIO()
    try:
        pcsv.write_csv(batch, buffer, _PLAIN)
    except pa.ArrowInvalid:
        buffer = io.BytesIO()
        pcsv.write_csv(batch, buffer, _QUOTED)
    return buffer.getvalue()


class CsvWriter:
    """CSV that quotes only values that need it (pyarrow's writers quote every text value).

    Each chunk is written unquoted when none of its values holds a separator, quote or line
    break, else with pyarrow's "needed" quoting (every text value quoted): both are RFC 4180.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._file: BinaryIO = path.open("wb")
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(schema.names)
        self._file.write(header.getvalue().encode("utf-8"))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows < SPLIT_ROWS:
            self._file.write(_format_csv(batch))
            return
        # Formatting floats is the costly part: format the second half on another core meanwhile.
        half = batch.num_rows // 2
        second = _formatter().submit(_format_csv, batch.slice(half))
        self._file.write(_format_csv(batch.slice(0, half)))
        self._file.write(second.result())

    def close(self) -> None:
        self._file.close()


class TableWriter:
    """One output table, opened with its schema (so an empty table still has its header)."""

    def __init__(self, path: Path, schema: pa.Schema, output_format: str) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer: CsvWriter | pq.ParquetWriter
        if output_format == "parquet":
            # Dictionary encoding only for non-float columns: on floats it costs 4x and saves nothing.
            dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
            self._writer = pq.ParquetWriter(
                str(path), schema, compression="snappy", use_dictionary=dictionary
            )
        else:
            self._writer = CsvWriter(path, schema)

    def write(self, columns: list[pa.Array]) -> None:
        """Append rows given as one array per schema column."""
        if not columns or len(columns[0]) == 0:
            return
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
