"""Writers for the row outputs: Q_keep, Q_discard, Q_rejected and svd_scores, as CSV or Parquet.

Rows arrive chunk by chunk in input order and are written at once (memory stays bounded by
the chunk size). CSV values are written by pyarrow: text exactly as read, floats in their
shortest round-trip form (a float written parses back to the same double).
"""

from __future__ import annotations

import csv
import io
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


class CsvWriter:
    """CSV that quotes only values that need it (pyarrow's writers quote every text value).

    Each chunk is written unquoted when none of its values holds a separator, quote or line
    break, else with pyarrow's "needed" quoting (every text value quoted): both are RFC 4180.
    """

    _PLAIN = pcsv.WriteOptions(include_header=False, quoting_style="none")
    _QUOTED = pcsv.WriteOptions(include_header=False, quoting_style="needed")

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._file: BinaryIO = path.open("wb")
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(schema.names)
        self._file.write(header.getvalue().encode("utf-8"))

    def write_batch(self, batch: pa.RecordBatch) -> None:
        buffer = io.BytesIO()
        try:
            pcsv.write_csv(batch, buffer, self._PLAIN)
        except pa.ArrowInvalid:
            buffer = io.BytesIO()
            pcsv.write_csv(batch, buffer, self._QUOTED)
        self._file.write(buffer.getbuffer())

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
