"""One row output from the parts the shards of a sharded run wrote (docs/contract.md, "Sharded runs").

Each pass-2 shard writes its part of every row output: CSV rows without the header line, or a complete
Parquet file. Assembly puts the parts in shard order behind one header (CSV: bytes copied as they are) or
rewrites their row groups into one Parquet file, one row group at a time (memory: one row group). The
pipeline's finish step assembles CSV in S3 itself (``UploadPartCopy``); these functions serve ``q4 run
--shards`` and the Parquet outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.parquet as pq

from q4.outputs import Sink, parquet_options
from q4.sources import Source

#: Bytes per read when a CSV part is copied.
COPY_BYTES = 8 << 20


def assemble_csv(header: bytes, parts: Sequence[Source], sink: Sink) -> int:
    """Write ``header`` then every part's bytes, in order, to ``sink`` (not closed); returns the bytes
    written."""
    written = sink.write(header) or 0
    for part in parts:
        with part.open() as f:
            while block := f.read(COPY_BYTES):
                written += sink.write(block) or 0
    return int(written)


def assemble_parquet(parts: Sequence[Source], sink: Sink) -> int:
    """Rewrite the row groups of every part, in order, into one Parquet file on ``sink`` (not closed),
    written as the row outputs are (:func:`q4.outputs.parquet_options`); returns the rows written.

    Every part must have the first part's schema (they come from one run's writers)."""
    if not parts:
        raise ValueError("assemble_parquet needs at least one part (every shard writes one)")
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            with part.arrow_file() as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                if writer is None:
                    writer = pq.ParquetWriter(sink, schema, **parquet_options(schema))
                elif not schema.equals(writer.schema):
                    raise ValueError(f"the part {part.label} has another schema than the first part")
                for i in range(pf.metadata.num_row_groups):
                    group = pf.read_row_group(i)
                    writer.write_table(group)
                    rows += group.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows
