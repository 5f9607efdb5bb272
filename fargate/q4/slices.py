"""One shard's slice of the input table (docs/contract.md, "Sharded runs", "The plan").

A slice is a list of byte ranges ``{key, start, end}`` of the input files (``plan_slices`` of
``q4_contract.shards``).
A row belongs to the range that holds its first byte:

- **CSV**: the first byte of its line. The header line (found following quotes) is not a row. A range's
  rows start after the first line end (LF, CRLF or a lone CR) at or after its ``start`` and end with the
  first line end at or after its ``end`` (a range starting just after a line end starts there): the bytes
  of its first partial line are skipped, and the rows are read as a CSV file of their own
  (:class:`CsvSlice`: the file's header line, then those rows), so the table reader works unchanged. A
  shard cannot tell there whether that line end lies inside a quoted value (a value holding a line
  break): that needs the quotes before it, in every earlier slice. So each range reports its ``"`` count
  and the quotes before its first line end, and once every shard's counts are in, a cut whose line end has
  an odd number of quotes before it in its file fails the run ``unshardable_csv``
  (:func:`check_boundaries`) instead of giving a wrong answer. A boundary inside a quoted value without a
  line break after it on that line is fine.
- **compressed CSV**: the whole file is one range (it cannot be cut by bytes).
- **Parquet**: the row groups whose first column chunk's first byte lies in the range. Those first bytes
  must increase strictly from row group to row group and lie within the file, else the file is
  ``malformed_parquet`` (:func:`row_group_starts`): out of order, the slices would reorder rows; outside
  the file, lose them. Each range reports its rows and the file's footer row count, and once every shard's
  counts are in, a file whose ranges do not add up to its footer's rows fails the run
  (:func:`check_parquet_rows`).

So the slices partition the rows; a slice may hold none.
"""

from __future__ import annotations

import dataclasses
import io
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from q4.errors import InputError
from q4.sources import Source
from q4.tables import InputTable, csv_codec, malformed_parquet

#: Bytes per read when scanning for a line start or counting quotes.
SCAN_BYTES = 1 << 16
_QUOTE, _LF, _CR = 0x22, 0x0A, 0x0D
_SPECIAL = re.compile(rb'["\r\n]')
_LINE_END = re.compile(rb"[\r\n]")


@dataclass
class RangeRead:
    """What reading one range found: its quote count (``"`` bytes in the raw range ``[start, end)``) and
    where its file's header line ends, for :func:`check_boundaries` (CSV ranges that cut their file)."""

    key: str
    start: int
    end: int
    quotes: int | None = None
    header_end: int | None = None
    lead_quotes: int | None = None  # the quotes between ``start`` and the line end where its rows begin
    slice: CsvSlice | None = None  # the rows read (a cut CSV); their quotes are counted as they are read
    rows: int | None = None  # Parquet: the rows of the range's row groups (the read checks them)
    file_rows: int | None = None  # Parquet: the rows the file's footer declares

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "start": self.start,
            "end": self.end,
            "quotes": self.quotes,
            "header_end": self.header_end,
            "lead_quotes": self.lead_quotes,
            "rows": self.rows,
            "file_rows": self.file_rows,
        }


def slice_table(table: InputTable, ranges: Sequence[Mapping[str, Any]]) -> tuple[InputTable, list[RangeRead]]:
    """The table of one slice: only the files ``ranges`` name (by ``table.names``), each cut to its range.

    Returns the table and one :class:`RangeRead` per range (call :func:`finish_counts` once the table was
    read through, to complete the quote counts)."""
    index = {name: i for i, name in enumerate(table.names)}
    sources: list[Source] = []
    names: list[str] = []
    groups: list[tuple[int, ...] | None] = []
    reads: list[RangeRead] = []
    for r in sorted(ranges, key=lambda r: (index.get(str(r["key"]), -1), int(r["start"]))):
        key, start, end = str(r["key"]), int(r["start"]), int(r["end"])
        if key not in index:
            raise ValueError(f"the slice names {key!r}, which is not one of the inputs {list(table.names)}")
        source = table.sources[index[key]]
        read = RangeRead(key, start, end)
        reads.append(read)
        names.append(key)
        if table.format == "parquet":
            layout = parquet_layout(source)
            chosen = layout.groups_in(start, end)
            read.rows, read.file_rows = sum(layout.rows[i] for i in chosen), layout.num_rows
            sources.append(source)
            groups.append(chosen)
        elif (start == 0 and end >= source.size) or csv_codec(source) is not None:
            sources.append(source)  # the whole file (a compressed one always is)
        else:
            read.slice = _cut_csv(source, start, end, read)
            sources.append(read.slice)
    return (
        dataclasses.replace(
            table,
            sources=tuple(sources),
            names=tuple(names),
            bytes=sum(int(r["end"]) - int(r["start"]) for r in ranges),
            row_groups=tuple(groups) if table.format == "parquet" else None,
        ),
        reads,
    )


def finish_counts(reads: Sequence[RangeRead], *, recount: bool = False) -> None:
    """Complete each cut CSV range's quote count once its rows were read through (or, ``recount``: when the
    read stopped part way, count the range's bytes again)."""
    for read in reads:
        if read.slice is None:
            continue
        counted = read.slice.body_quotes()
        if recount or counted is None or read.slice.pending_quotes is None:
            with read.slice.source.open() as f:
                read.quotes = count_quotes(f, read.start, read.end)
        else:
            read.quotes = read.slice.pending_quotes + counted


def check_boundaries(reads: Sequence[Mapping[str, Any]]) -> None:
    """``unshardable_csv`` when a cut CSV's range begins its rows after a line end that lies inside a quoted
    value: an odd number of ``"`` in the file before that line end (``reads``: every shard's
    :meth:`RangeRead.to_dict`, any order)."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for r in reads:
        if r.get("quotes") is not None:
            by_key.setdefault(str(r["key"]), []).append(r)
    for key, ranges in by_key.items():
        quotes = 0
        for r in sorted(ranges, key=lambda r: int(r["start"])):
            header_end = int(r.get("header_end") or 0)
            if int(r["start"]) > header_end and (quotes + int(r.get("lead_quotes") or 0)) % 2:
                raise InputError(
                    "unshardable_csv",
                    f"The CSV file {key.rsplit('/', 1)[-1]} cannot be cut into slices near byte "
                    f"{int(r['start']):,}: a quoted value there holds a line break; run it with 1 shard.",
                    {"input": key, "byte_offset": int(r["start"]), "quotes_before": quotes},
                )
            quotes += int(r["quotes"])


# ---------------------------------------------------------------- Parquet


@dataclass(frozen=True)
class ParquetLayout:
    """Where a Parquet file's row groups begin (checked: strictly increasing, within the file) and the rows
    each declares; ``num_rows``: the footer's row count."""

    starts: tuple[int, ...]
    rows: tuple[int, ...]
    num_rows: int

    def groups_in(self, start: int, end: int) -> tuple[int, ...]:
        """The row groups whose first byte lies in ``[start, end)``, in file order."""
        return tuple(i for i, first in enumerate(self.starts) if start <= first < end)


def parquet_layout(source: Source) -> ParquetLayout:
    """The file's :class:`ParquetLayout` from its footer (read once already by ``open_inputs``, which
    reported a bad one); ``malformed_parquet``, naming the file, when its row groups' first bytes do not
    increase strictly or lie outside the file (:func:`row_group_starts_problem`)."""
    with source.arrow_file() as f:
        meta = pq.ParquetFile(f).metadata
        starts, rows = [], []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            chunk = group.column(0)
            first = chunk.data_page_offset
            # a dictionary page comes first; 0 is not one (some writers store 0 for "none")
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                first = min(first, chunk.dictionary_page_offset)
            starts.append(int(first))
            rows.append(int(group.num_rows))
        num_rows = int(meta.num_rows)
    problem = row_group_starts_problem(starts, source.size)
    if problem is not None:
        raise malformed_parquet(source.name, source.label, problem)
    return ParquetLayout(tuple(starts), tuple(rows), num_rows)


def row_group_starts(source: Source) -> list[int]:
    """The first byte of each row group: its first column chunk's dictionary page, else its first data
    page (checked as :func:`parquet_layout` does)."""
    return list(parquet_layout(source).starts)


def row_group_starts_problem(starts: Sequence[int], size: int) -> str | None:
    """What is wrong with row groups beginning at ``starts`` in a file of ``size`` bytes, else None: each
    must lie in ``[0, size)`` and after the one before it (strictly), or slicing by bytes would lose or
    reorder rows."""
    previous: int | None = None
    for i, first in enumerate(starts):
        if not 0 <= first < size:
            return f"row group {i + 1:,} begins at byte {first:,}, outside the file's {size:,} bytes"
        if previous is not None and first <= previous:
            return (
                f"row group {i + 1:,} begins at byte {first:,}, not after row group {i:,}, "
                f"which begins at byte {previous:,}"
            )
        previous = first
    return None


def check_parquet_rows(reads: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None) -> None:
    """``malformed_parquet`` when a Parquet input's ranges (``reads``: every shard's
    :meth:`RangeRead.to_dict`, any order) do not hold, together, the rows its footer declares: rows would
    be lost or counted twice. ``labels``: each key's label for the error's details (else the key)."""
    found: dict[str, int] = {}
    declared: dict[str, int] = {}
    for r in reads:
        if r.get("file_rows") is None:
            continue
        key = str(r["key"])
        found[key] = found.get(key, 0) + int(r.get("rows") or 0)
        declared[key] = int(r["file_rows"])
    for key, rows in found.items():
        if rows != declared[key]:
            raise malformed_parquet(
                key.rsplit("/", 1)[-1],
                (labels or {}).get(key, key),
                f"its footer declares {declared[key]:,} rows but the slices' row groups hold {rows:,}",
            )


# ---------------------------------------------------------------- CSV


def _cut_csv(source: Source, start: int, end: int, read: RangeRead) -> CsvSlice:
    with source.open() as f:
        size = source.size
        header_end, _ = _scan_line_end(f, 0, size)
        body_start, quotes_before = _row_start(f, start, size, header_end)
        body_end, quotes_after = _row_start(f, end, size, header_end)
        read.header_end, read.lead_quotes = header_end, quotes_before
    # quotes [start, end) = [start, body_start) + [body_start, body_end) - [end, body_end); line ends are
    # found without regard to quotes, so body_start <= body_end (equal: the range holds no line start)
    cut = CsvSlice(source, header_end, body_start, body_end)
    cut.pending_quotes = quotes_before - quotes_after
    return cut


def _row_start(f: Any, pos: int, size: int, header_end: int) -> tuple[int, int]:
    """Where the rows of a range starting at ``pos`` begin: ``pos`` after a line end, else after the first
    line end following it (quotes not followed: see the module's doc), and the quotes in ``[pos, it)``.
    No row starts within the header line."""
    if pos <= header_end:
        return header_end, count_quotes(f, pos, header_end)
    if pos >= size:
        return size, 0
    f.seek(pos - 1)
    before = f.read(1)
    if before == b"\n":
        return pos, 0
    if before == b"\r":  # a lone CR ends a line; CRLF ends after its LF
        return (pos + 1 if f.read(1) == b"\n" else pos), 0
    quotes, offset = 0, pos  # offset: the file offset of data[0]
    while data := f.read(SCAN_BYTES):
        m = _LINE_END.search(data)
        if m is None:
            quotes += data.count(b'"')
            offset += len(data)
            continue
        j = m.start()
        quotes += data.count(b'"', 0, j)
        if data[j] == _LF:
            return offset + j + 1, quotes
        following = data[j + 1 : j + 2] if j + 1 < len(data) else f.read(1)
        return offset + j + 1 + (following == b"\n"), quotes
    return size, quotes


def _scan_line_end(f: Any, pos: int, size: int) -> tuple[int, int]:
    """The byte after the first line end (LF, CRLF or a lone CR) outside quotes at or after ``pos`` (the end
    of the file if none), and the quotes before it; ``pos`` is taken to be outside a quoted value."""
    f.seek(pos)
    block, base, i = b"", pos, 0
    inside, quotes = False, 0

    def more() -> bool:
        nonlocal block, base, i
        data = f.read(SCAN_BYTES)
        if not data:
            return False
        block, base, i = block[i:] + data, base + i, 0
        return True

    while True:
        if inside:
            j = block.find(b'"', i)
            if j < 0:
                i = len(block)
                if not more():
                    return size, quotes
                continue
            quotes, inside, i = quotes + 1, False, j + 1
            continue
        m = _SPECIAL.search(block, i)
        if m is None:
            i = len(block)
            if not more():
                return size, quotes
            continue
        j = m.start()
        c = block[j]
        if c == _QUOTE:
            quotes, inside, i = quotes + 1, True, j + 1
        elif c == _LF:
            return base + j + 1, quotes
        else:  # CR: a line end; CRLF ends after the LF
            if j + 1 == len(block):
                i = j
                if not more():
                    return size, quotes
                j = 0
            return base + j + (2 if block[j + 1 : j + 2] == b"\n" else 1), quotes


def count_quotes(f: Any, start: int, end: int) -> int:
    """The ``"`` bytes in ``[start, end)`` of a seekable binary file."""
    f.seek(start)
    left, quotes = end - start, 0
    while left > 0 and (data := f.read(min(SCAN_BYTES, left))):
        left -= len(data)
        quotes += data.count(b'"')
    return quotes


class CsvSlice(Source):
    """A CSV file's header line followed by its bytes ``[body_start, body_end)`` (whole rows): a CSV file of
    its own, read by the table reader like any input. It counts the ``"`` of the rows' bytes the first time
    each is read (the reader reads the file once, front to back; its checks re-read parts)."""

    def __init__(self, source: Source, header_end: int, body_start: int, body_end: int) -> None:
        self.source = source
        self.header_end = header_end
        self.body_start = body_start
        self.body_end = body_end
        #: quotes of the range outside the body (set by the cutter; None: the range was counted whole)
        self.pending_quotes: int | None = None
        self._lock = threading.Lock()
        self._counted_to = 0  # body bytes counted so far (from the body's start)
        self._quotes = 0

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def label(self) -> str:
        return self.source.label

    @property
    def size(self) -> int:
        return self.header_end + self.body_end - self.body_start

    def exists(self) -> bool:
        return self.source.exists()

    def open(self) -> io.RawIOBase:
        return _SliceFile(self)

    def body_quotes(self) -> int | None:
        """The quotes of the whole body, once every byte of it was read; else None."""
        with self._lock:
            return self._quotes if self._counted_to >= self.body_end - self.body_start else None

    def _count(self, body_offset: int, data: memoryview) -> None:
        with self._lock:
            skip = self._counted_to - body_offset
            if skip < 0 or skip >= len(data):  # a gap (not read in order) or nothing new
                return
            self._quotes += data[skip:].tobytes().count(b'"')
            self._counted_to = body_offset + len(data)


class _SliceFile(io.RawIOBase):
    """A seekable, read-only view of a :class:`CsvSlice`: the header bytes, then the body's."""

    def __init__(self, cut: CsvSlice) -> None:
        self._cut = cut
        self._file = cut.source.open()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._cut.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        cut = self._cut
        view = memoryview(buffer).cast("B")
        if self._pos < cut.header_end:
            source_pos, left = self._pos, cut.header_end - self._pos
        else:
            body_offset = self._pos - cut.header_end
            source_pos, left = cut.body_start + body_offset, cut.body_end - cut.body_start - body_offset
        want = min(len(view), left)
        if want <= 0:
            return 0
        self._file.seek(source_pos)
        n = self._file.readinto(view[:want]) or 0
        if n and self._pos >= cut.header_end:
            cut._count(self._pos - cut.header_end, view[:n])
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()
