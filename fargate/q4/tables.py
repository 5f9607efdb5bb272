"""Reading the input table: one or more CSV or Parquet files, streamed in bounded chunks.

CSV files are read with **every column as text**, so passthrough values are written back
byte for byte ("007" stays "007") and a bad cell far into a numeric column rejects that row
instead of stopping the stream. Which columns are numeric (the default features) is decided
by pyarrow's type inference on the first block of the first file. Parquet files keep their
own types. Several files are one table when their column names (and, for Parquet, types)
agree.

A compressed CSV file (``.csv.gz``, ``.csv.bz2``, ``.csv.zst``) is the same table: pyarrow decompresses
it as a stream, and every check that reads raw bytes (byte order marks, the separator, the unclosed
quote, the last value) reads the decompressed bytes. Its sha256 and size are those of the file as given.

Every input is read through a :class:`q4.sources.Source` (a local file, an S3 object), never a path:
messages name it by ``source.name``, error details by ``source.label``.
"""

from __future__ import annotations

import hashlib
import io
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from q4_contract.shards import UNSPLITTABLE_SUFFIXES

from q4 import csvsplit
from q4.cpus import available_cpus
from q4.csvsplit import ChainedReader, LineBlocks
from q4.errors import InputError
from q4.features import FeatureBlock, is_number_text, looks_numeric
from q4.parallel import ordered_map
from q4.sources import Source, as_source, as_sources

#: The pyarrow codec of each compression suffix.
_CODEC_OF_SUFFIX = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Compressed CSV files, read as streams through pyarrow's codecs: suffix (case-insensitive) -> codec. The
#: suffixes are the contract's (``q4_contract.shards.UNSPLITTABLE_SUFFIXES``: the plan gives such a file
#: whole to one slice), so the two cannot disagree; a suffix added there without a codec here fails on
#: import.
CSV_CODECS = {suffix: _CODEC_OF_SUFFIX[suffix.removeprefix(".csv")] for suffix in UNSPLITTABLE_SUFFIXES}
CSV_SUFFIXES = (".csv", *CSV_CODECS)
_CODEC_NAMES = {"gzip": "gzip", "bz2": "bzip2", "zstd": "Zstandard"}
#: RFC 4180: a quoted value may span lines (q4's own CSV outputs hold such values). Without this,
#: pyarrow's chunker splits blocks at any newline and a quoted newline near a block boundary breaks
#: the parse. It costs nothing measurable (2M x 16 CSV: 1.93 s either way).
PARSE_OPTIONS = pcsv.ParseOptions(newlines_in_values=True)
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Columns q4 adds to its outputs; an input may not already have them.
RESERVED_COLUMNS = ("q4_row", "q4_quadrant", "q4_score1", "q4_score2", "q4_reason")

ProgressCallback = Callable[[int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class InputTable:
    """The input files, read as one table."""

    sources: tuple[Source, ...]
    names: tuple[str, ...]
    format: str  # "csv" | "parquet"
    schema: pa.Schema  # as streamed: CSV all strings, Parquet native
    numeric: tuple[str, ...]  # integer or floating point columns (not boolean), in table order
    bytes: int
    #: Parquet: per source, the row groups to read (None: all); a shard's slice (q4.slices)
    row_groups: tuple[tuple[int, ...] | None, ...] | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def csv_codec(source: Source) -> str | None:
    """The pyarrow codec a compressed CSV file is read with (``gzip``, ``bz2``, ``zstd``), else None."""
    name = source.name.lower()
    return next((codec for suffix, codec in CSV_CODECS.items() if name.endswith(suffix)), None)


def input_format(source: Source) -> str:
    """``csv`` or ``parquet`` by file name; a clear error otherwise."""
    name = source.name.lower()
    if name.endswith(CSV_SUFFIXES):
        codec = csv_codec(source)
        if codec is not None and not pa.Codec.is_available(codec):
            raise InputError(
                "unsupported_input",
                f"The input {source.name} is {_CODEC_NAMES[codec]}-compressed but this pyarrow build cannot "
                "decompress it; decompress the file and run again.",
                {"input": source.label, "compression": codec},
            )
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise InputError(
        "unsupported_input",
        f"The input {source.name} is neither a .csv nor a .parquet file "
        "(nor a .csv.gz, .csv.bz2 or .csv.zst); convert it to CSV or Parquet.",
        {"input": source.label},
    )


@contextmanager
def csv_bytes(source: Source) -> Iterator[Any]:
    """The bytes of a CSV file as a readable stream: the file itself, or its decompressed content.

    A compressed stream that cannot be decompressed (truncated, not of its codec, corrupt) fails as
    ``malformed_csv`` with one sentence.
    """
    codec = csv_codec(source)
    if codec is None:
        with source.open() as f:
            yield f
        return
    try:
        with source.arrow_file() as raw, pa.CompressedInputStream(raw, codec) as stream:
            yield stream
    except OSError as exc:
        raise _compression_error(source, codec, exc) from None


def _compression_error(source: Source, codec: str, exc: Exception) -> InputError:
    problem = " ".join(str(exc).split())
    return InputError(
        "malformed_csv",
        f"The CSV file {source.name} is not a complete {_CODEC_NAMES[codec]} stream ({problem}); compress it "
        "again from its source (or copy the whole file) and run again.",
        {"input": source.label, "problem": problem, "compression": codec},
    )


def _holds_at_most(source: Source, limit: int) -> bool:
    """Whether the file's CSV text (decompressed, for a compressed file) is at most ``limit`` bytes."""
    if csv_codec(source) is None:
        return source.size <= limit
    with csv_bytes(source) as stream:
        return len(stream.read(limit + 1)) <= limit


def open_inputs(inputs: Sequence[Source | Path | str], names: Sequence[str] | None = None) -> InputTable:
    """Check the input files and read their columns (no data is read beyond a header block).

    ``inputs``: :class:`~q4.sources.Source` objects; a path is read as a :class:`~q4.sources.LocalSource`.
    """
    sources = as_sources(inputs)
    if not sources:
        raise InputError("no_input", "No input file was given; pass at least one CSV or Parquet file.")
    names = tuple(names) if names is not None else tuple(p.label for p in sources)
    formats = set()
    total = 0
    for source in sources:
        formats.add(input_format(source))
        if not source.exists():
            raise InputError(
                "input_not_found",
                f"The input file {source.label} does not exist; check the path.",
                {"input": source.label},
            )
        size = source.size
        if size == 0:
            raise InputError(
                "empty_input",
                f"The input file {source.name} is empty; "
                "give a table with a header row and at least 2 data rows.",
                {"input": source.label},
            )
        if csv_codec(source) is not None and _holds_at_most(source, 0):
            raise InputError(
                "empty_input",
                f"The input {source.name} is empty once decompressed; "
                "give a table with a header row and at least 2 data rows.",
                {"input": source.label},
            )
        total += size
    if len(formats) > 1:
        raise InputError(
            "mixed_input_formats",
            "The inputs mix CSV and Parquet files; convert them to one format to read them as one table.",
        )
    fmt = formats.pop()
    schemas = [_csv_schema(p) if fmt == "csv" else _parquet_schema(p) for p in sources]
    first = schemas[0]
    for source, schema in zip(sources[1:], schemas[1:], strict=True):
        same = schema.names == first.names if fmt == "csv" else schema.equals(first)
        if not same:
            if fmt == "csv":  # a header that swallowed the rest of its file is not "other columns"
                _check_last_value(source, schema.names[-1])
            raise InputError(
                "input_columns_differ",
                f"The input {source.name} has other columns than {sources[0].name}; "
                "files read as one table must have the same columns in the same order.",
                {"input": source.label, "columns": schema.names, "expected": first.names},
            )
    _check_names(first.names, sources[0], csv=fmt == "csv")
    if fmt == "csv":
        stream_schema = pa.schema([pa.field(n, pa.string()) for n in first.names])
        numeric = _csv_numeric_columns(sources, stream_schema)
    else:
        stream_schema = first
        if sum(_parquet_rows(p) for p in sources) == 0:
            raise _no_rows(sources[0])
        numeric = tuple(f.name for f in first if _is_numeric(f.type))
    return InputTable(tuple(sources), names, fmt, stream_schema, numeric, total)


#: How much of a CSV file decides which columns are numeric.
SAMPLE_BYTES = 1 << 20


def _csv_numeric_columns(sources: Sequence[Source], schema: pa.Schema) -> tuple[str, ...]:
    """Numeric-looking columns, judged on the first 1 MiB of the first CSV file with data rows."""
    for source in sources:
        try:
            with csv_bytes(source) as raw:  # a stream: pyarrow reads (decompresses) only the blocks asked for
                reader = pcsv.open_csv(
                    raw,
                    read_options=pcsv.ReadOptions(block_size=SAMPLE_BYTES, use_threads=False),
                    parse_options=PARSE_OPTIONS,
                    convert_options=pcsv.ConvertOptions(column_types=schema, strings_can_be_null=False),
                )
                try:
                    sample = reader.read_next_batch()
                    last = sample
                    if _holds_at_most(source, SAMPLE_BYTES):
                        # the whole file: its last row may be a quote that swallowed the rest (it would
                        # skew the numeric columns); a longer file's first block ends before such a row
                        for batch in reader:
                            last = batch if batch.num_rows else last
                except StopIteration:
                    continue
                finally:
                    reader.close()
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise _csv_error(source, exc) from None
        if last.num_rows:
            _check_last_value(source, last.column(last.num_columns - 1)[-1].as_py())
        if sample.num_rows:
            return tuple(n for n in schema.names if looks_numeric(sample.column(n)))
    for source in sources:  # a header that swallowed the rest of its file has no data rows either
        _check_last_value(source, schema.names[-1])
    raise _no_rows(sources[0])


def _no_rows(source: Source) -> InputError:
    return InputError(
        "too_few_rows",
        f"The input {source.name} has a header but no data rows; give a table with at least 2 data rows.",
        {"input": source.label},
    )


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _check_names(columns: Sequence[str], source: Source, csv: bool = False) -> None:
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            if csv and all(is_number_text(c) for c in columns):  # numeric_header's case, made fatal
                raise InputError(
                    "duplicate_columns",
                    f"The input {source.name} has two columns named {name!r} and every column name is a "
                    "number: the file most likely has no header row (its first data row was read as "
                    "one); add a header line with a unique name per column.",
                )
            raise InputError(
                "duplicate_columns",
                f"The input {source.name} has two columns named {name!r}; give every column a unique name.",
            )
        seen.add(name)
        if name in RESERVED_COLUMNS:
            raise InputError(
                "reserved_column",
                f"The input {source.name} has a column named {name!r}, "
                "which q4 adds to its outputs; rename it.",
            )


def _csv_error(source: Source, exc: Exception) -> InputError:
    problem = " ".join(str(exc).split())
    # pyarrow quotes the offending row: keep the sentence printable (NULs, escapes) on one line
    problem = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in problem)
    if "UTF8" in problem or "utf-8" in problem.lower():
        return InputError(
            "malformed_csv",
            f"The CSV file {source.name} is not UTF-8 text; save it as UTF-8 and run again.",
            {"input": source.label, "problem": problem},
        )
    separator = _other_separator(source)
    if separator is not None:
        return _other_separator_error(source, separator, problem)
    opened = unclosed_quote(source)
    if opened is not None:  # the parse failed because a quoted value runs to the end of the file
        return _unclosed_quote_error(source, opened)
    if "straddling object" in problem:
        return InputError(
            "malformed_csv",
            f"The CSV file {source.name} has a row longer than the reader's block "
            f"({MAX_BLOCK_BYTES >> 20} MiB); shorten the row.",
            {"input": source.label, "problem": problem},
        )
    if len(problem) > 160:
        problem = problem[:157] + "..."
    return InputError(
        "malformed_csv",
        f"The CSV file {source.name} cannot be parsed ({problem}); "
        "fix it so every row has as many fields as the header.",
        {"input": source.label, "problem": str(exc)},
    )


_QUOTE, _COMMA, _LF, _CR = 0x22, 0x2C, 0x0A, 0x0D
_UTF8_BOM = b"\xef\xbb\xbf"
#: Bytes per read when scanning a file for an unclosed quote.
SCAN_BYTES = 1 << 22


def unclosed_quote(source: Source | Path) -> int | None:
    """The byte offset of the quote opening a value the file never closes, else None.

    Follows pyarrow's CSV lexer (RFC 4180, double quotes, ``,`` separators): a quote opens a quoted
    value only at the start of a field (after ``,``, CR, LF or at the start of the file); inside one,
    ``""`` is a quote and a lone ``"`` closes it; any other quote is a plain character. Vectorized per
    4 MiB: assuming no plain quotes, quote k of a chunk is outside a value iff ``k + inside`` is even; a
    chunk where that assumption breaks is walked quote by quote. Only called when a file's tail looks
    like an open quote (:func:`_check_last_value`) or its parse failed.
    """
    source = as_source(source)
    inside = False
    last_close = -2  # offset of the last quote that closed a value ("" re-opens it)
    opened = -1
    prev = _LF  # the byte before the chunk
    base = 0
    size = max(SCAN_BYTES, len(_UTF8_BOM))  # the first read holds a whole BOM, whatever SCAN_BYTES is
    with csv_bytes(source) as f:
        while chunk := f.read(size):
            if base == 0 and chunk.startswith(_UTF8_BOM):  # pyarrow skips it: a field starts after it
                chunk = b"\n\n\n" + chunk[3:]
            if b'"' in chunk:
                inside, last_close, opened = _scan_chunk(chunk, base, prev, inside, last_close, opened)
            prev = chunk[-1]
            base += len(chunk)
            size = SCAN_BYTES
    return opened if inside else None


def _scan_chunk(
    chunk: bytes, base: int, prev: int, inside: bool, last_close: int, opened: int
) -> tuple[bool, int, int]:
    a = np.frombuffer(chunk, np.uint8)
    q = np.flatnonzero(a == _QUOTE)
    before = np.empty(q.size, np.uint8)
    before[1:] = a[q[1:] - 1]
    before[0] = a[q[0] - 1] if q[0] else prev
    outside = (np.arange(q.size) + inside) % 2 == 0
    starts = (before == _COMMA) | (before == _LF) | (before == _CR)
    escape = before == _QUOTE  # for k >= 1 the quote before was a closing one (k - 1 was inside)
    escape[0] &= base + int(q[0]) - 1 == last_close
    if not (outside & ~starts & ~escape).any():  # no plain quote: the parity rule is exact
        opens = np.flatnonzero(outside & ~escape)
        if opens.size:
            opened = base + int(q[opens[-1]])
        if not outside[-1]:
            last_close = base + int(q[-1])
        return bool((q.size + inside) % 2), last_close, opened
    for i in q.tolist():  # a plain quote somewhere: walk this chunk quote by quote
        p = base + i
        if inside:
            inside, last_close = False, p
        elif p - 1 == last_close:
            inside = True
        elif (a[i - 1] if i else prev) in (_COMMA, _LF, _CR):
            inside, opened = True, p
    return inside, last_close, opened


def _line_of(source: Source, offset: int) -> int:
    """The 1-based line (LF, CRLF or CR endings) holding byte ``offset``."""
    lf = cr = crlf = 0
    last = b""
    with csv_bytes(source) as f:
        left = offset
        while left > 0 and (data := f.read(min(SCAN_BYTES, left))):
            left -= len(data)
            lf += data.count(b"\n")
            cr += data.count(b"\r")
            crlf += data.count(b"\r\n") + (last == b"\r" and data[:1] == b"\n")
            last = data[-1:]
    return 1 + lf + cr - crlf


def _unclosed_quote_error(source: Source, offset: int) -> InputError:
    line = _line_of(source, offset)
    return InputError(
        "malformed_csv",
        f"The CSV file {source.name} ends inside a quoted value: the quote that opens it on line {line:,} is "
        'never closed; close it, or double it ("") if it is part of the value.',
        {"input": source.label, "problem": "unclosed_quote", "line": line, "byte_offset": offset},
    )


def _check_last_value(source: Source, value: str, kept: _Tail | None = None) -> None:
    """Fail if the file ends inside a quoted value whose text pyarrow returned as ``value`` (the last
    field of the last row): such a value is the rest of the file after its opening quote, so the file's
    last bytes are ``"`` + the value with quotes doubled. Almost every file fails that comparison at
    once (a read of len(value) + 1 bytes); the few that pass are confirmed by :func:`unclosed_quote`.
    ``kept``: the tail of the decompressed stream just read, so a compressed file is not read again."""
    tail = b'"' + value.replace('"', '""').encode("utf-8")
    if kept is not None and (len(tail) <= kept.n or kept.seen <= kept.n):
        found = kept.bytes()[-len(tail) :] if len(tail) <= min(kept.seen, kept.n) else b""
    else:
        found = _tail_of(source, len(tail))
    if found != tail:
        return
    opened = unclosed_quote(source)
    if opened is not None:
        raise _unclosed_quote_error(source, opened)


def _tail_of(source: Source, n: int) -> bytes:
    """The last ``n`` bytes of the file's CSV text (fewer if it is shorter); a compressed file is
    decompressed to its end, keeping only the tail."""
    if csv_codec(source) is None:
        size = source.size
        if n > size:
            return b""
        with source.open() as f:
            f.seek(size - n)
            return f.read()
    tail = _Tail(n)
    with csv_bytes(source) as f:
        while chunk := f.read(SCAN_BYTES):
            tail.add(chunk)
    return tail.bytes()


class _Tail:
    """The last ``n`` bytes of a stream fed in pieces."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._buffer = bytearray()

    def add(self, data: bytes | memoryview) -> None:
        self.seen += len(data)
        self._buffer += data
        if len(self._buffer) > 2 * self.n + SCAN_BYTES:
            del self._buffer[: len(self._buffer) - self.n]

    def bytes(self) -> bytes:
        return bytes(self._buffer[-self.n :]) if self.n else b""


#: Byte order marks of UTF-16 / UTF-32 text (UTF-8's own BOM is fine: pyarrow skips it).
_OTHER_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def _csv_schema(source: Source) -> pa.Schema:
    with csv_bytes(source) as f:
        if f.read(4).startswith(_OTHER_BOMS):
            raise _csv_error(source, UnicodeDecodeError("utf-8", b"", 0, 1, "a UTF-16/32 byte order mark"))
    try:
        with csv_bytes(source) as raw:
            reader = pcsv.open_csv(
                raw,
                read_options=pcsv.ReadOptions(block_size=1 << 20, use_threads=False),
                parse_options=PARSE_OPTIONS,
            )
            schema = reader.schema
            reader.close()
        schema.names  # noqa: B018 -- decodes the header: a header that is not UTF-8 fails here, not later
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _csv_error(source, exc) from None
    if len(schema.names) == 1:
        separator = _other_separator(source)
        if separator is not None:
            raise _other_separator_error(source, separator, None)
    return schema


#: Separators other programs write "CSV" with (Excel in many locales uses ';' and a decimal comma).
OTHER_SEPARATORS = (";", "\t", "|")


def _other_separator(source: Source) -> str | None:
    """The separator a header line without any comma uses instead, if it is one of OTHER_SEPARATORS."""
    with csv_bytes(source) as f:
        head = f.read(1 << 16)
    line = head.removeprefix(_UTF8_BOM).split(b"\n", 1)[0].decode("utf-8", "replace")
    if "," in line:
        return None
    counts = {sep: line.count(sep) for sep in OTHER_SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] > 0 else None


def _other_separator_error(source: Source, separator: str, problem: str | None) -> InputError:
    shown = {"\t": "tabs", ";": "';'", "|": "'|'"}[separator]
    return InputError(
        "malformed_csv",
        f"The CSV file {source.name} has no comma in its header line but is separated by {shown}; Q4 reads "
        "comma-separated files: save it with ',' between values (and '.' as the decimal point) and run "
        "again.",
        {"input": source.label, "problem": "other_separator", "separator": separator, "parser": problem},
    )


def _parquet_schema(source: Source) -> pa.Schema:
    try:
        with source.arrow_file() as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            _check_parquet_rows(source, pf.metadata)
            return schema
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, MemoryError):  # out of memory is a crash (retried), not a bad file
            raise
        raise _parquet_error(source, exc) from None


def _parquet_rows(source: Source) -> int:
    """The row count a Parquet file's footer declares (its footer was read once already)."""
    with source.arrow_file() as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def _check_parquet_rows(source: Source, meta: pq.FileMetaData) -> None:
    """Refuse a footer whose row counts contradict each other (before any data is read): pyarrow does
    not check the file's ``num_rows`` against its row groups', and progress and the no-rows check use it.

    Only row-group fields are read here: pyarrow builds a column chunk's metadata (``group.column(j)``)
    in code that aborts the process on a bad chunk (a schema type its statistics do not fit), where its
    reader raises an error instead; column chunks are checked after a clean read (_check_parquet_values).
    """
    total = 0
    for i in range(meta.num_row_groups):
        rows = meta.row_group(i).num_rows
        if rows < 0:
            raise _parquet_lie(source, f"row group {i + 1:,} declares {rows:,} rows")
        total += rows
    if total != meta.num_rows:
        raise _parquet_lie(
            source, f"its footer declares {meta.num_rows:,} rows but its row groups hold {total:,}"
        )


def _check_parquet_values(source: Source, meta: pq.FileMetaData, groups: Sequence[int] | None = None) -> None:
    """After the file was read: no flat column chunk holds more values than its row group has rows.

    pyarrow trusts a row group's ``num_rows``: a group declaring fewer rows than its pages hold is read
    short without a word. A flat column holds one value (or null) per row. 0.3 us per column chunk.
    """
    flat = [j for j in range(meta.num_columns) if meta.schema.column(j).max_repetition_level == 0]
    for i in range(meta.num_row_groups) if groups is None else groups:
        group = meta.row_group(i)
        for j in flat:
            values = group.column(j).num_values
            if values > group.num_rows:
                raise _parquet_lie(
                    source,
                    f"row group {i + 1:,} declares {group.num_rows:,} rows but its column "
                    f"{meta.schema.column(j).path!r} holds {values:,} values",
                )


def _parquet_lie(source: Source, problem: str) -> InputError:
    return malformed_parquet(source.name, source.label, problem)


def malformed_parquet(name: str, label: str, problem: str) -> InputError:
    """``malformed_parquet`` for a file whose footer contradicts itself or its file (``name``: the file's
    name for the message, ``label``: for the details)."""
    return InputError(
        "malformed_parquet",
        f"The Parquet file {name} contradicts itself ({problem}); "
        "the file is corrupt: write it again from its source.",
        {"input": label, "problem": problem},
    )


def _parquet_error(source: Source, exc: Exception) -> InputError:
    problem = " ".join(str(exc).split())  # pyarrow's messages may span lines: one sentence
    if "too deeply nested" in problem:  # pyarrow's advice ("increase the depth limit") is not the user's
        return InputError(
            "malformed_parquet",
            f"The Parquet file {source.name} nests columns more than 100 levels deep, "
            "more than the reader allows; flatten its schema.",
            {"input": source.label, "problem": problem},
        )
    if "Exceeded size limit" in problem:  # the footer's Thrift holds a string or list beyond the limits
        return InputError(
            "malformed_parquet",
            f"The Parquet file {source.name} has a footer (schema and key-value metadata) too large to "
            "read; write it again without the oversized metadata.",
            {"input": source.label, "problem": problem},
        )
    if len(problem) > 160:
        problem = problem[:157] + "..."
    return InputError(
        "malformed_parquet",
        f"The Parquet file {source.name} cannot be read ({problem}); "
        "check that it is a complete Parquet file.",
        {"input": source.label, "problem": str(exc)},
    )


_MALLOC = re.compile(r"malloc of size (\d+) failed")


def _parquet_memory_error(source: Source, pf: pq.ParquetFile, exc: MemoryError) -> InputError | None:
    """A malformed_parquet error if one allocation that failed asked for more bytes than the file holds
    and than any of its row groups declares uncompressed (a page header claiming a 2 GB page, say);
    None for a real lack of memory, which stays a crash (retried)."""
    found = _MALLOC.search(str(exc))
    if found is None:
        return None
    asked = int(found.group(1))
    meta = pf.metadata
    groups = (meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    largest = max(source.size, *groups)
    if asked <= largest:
        return None
    return InputError(
        "malformed_parquet",
        f"The Parquet file {source.name} cannot be read (decoding it asks for {asked:,} bytes at once, more "
        f"than the whole file or any of its row groups declares: {largest:,}); a page header is most "
        "likely corrupt: write the file again from its source.",
        {"input": source.label, "problem": str(exc), "bytes": asked, "largest": largest},
    )


class _HashingReader(io.RawIOBase):
    """A read-only file that feeds every byte read into a sha256 and reports progress."""

    def __init__(self, source: Source, on_bytes: ProgressCallback | None) -> None:
        self._file = source.open()
        self.sha256 = hashlib.sha256()
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            if self._on_bytes is not None:
                self._on_bytes(n)
        return n or 0

    def close(self) -> None:
        self._file.close()
        super().close()


class _DecompressedReader(io.RawIOBase):
    """A compressed file's decompressed stream, keeping its last bytes (the last-value check)."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream
        self.tail = _Tail(4 * MAX_BLOCK_BYTES + 2)  # a value fits in a block: quotes doubled, plus one

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = int(self._stream.readinto(buffer))
        if n:
            self.tail.add(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._stream.close()
        super().close()


#: CSV blocks larger than this parse no faster (smaller blocks pipeline better).
#: pyarrow's streaming CSV reader reads several blocks ahead: 1 MiB blocks parse fastest here
#: and keep its memory near 100 MB (8 MiB blocks: ~450 MB). Blocks are re-batched to chunk_rows.
MAX_BLOCK_BYTES = 1 << 20


def iter_batches(
    table: InputTable,
    chunk_rows: int,
    *,
    on_bytes: ProgressCallback | None = None,
    digests: dict[Source, str] | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield ``(file_index, batch)`` over all files in order, batches of at most ``chunk_rows`` rows.

    CSV files are hashed as they are read: each file's sha256 lands in ``digests``. ``columns``: Parquet
    files are read for these columns only (their batches hold them in the table's order); a CSV file's
    lines are parsed whole, every column.
    """
    for index, source in enumerate(table.sources):
        if table.format == "csv":
            batches = _iter_csv(table, source, chunk_rows, on_bytes, digests)
        else:
            groups = table.row_groups[index] if table.row_groups is not None else None
            batches = _iter_parquet(table, source, chunk_rows, on_bytes, groups, columns)
        yield from ((index, b) for b in batches)


def _iter_csv(
    table: InputTable,
    source: Source,
    chunk_rows: int,
    on_bytes: ProgressCallback | None,
    digests: dict[Source, str] | None,
) -> Iterator[pa.RecordBatch]:
    raw = _HashingReader(source, on_bytes)
    codec = csv_codec(source)
    stream_in = pa.PythonFile(raw, mode="r")
    # a compressed file: the file's bytes are hashed, its decompressed stream parsed (tail kept)
    text = None if codec is None else _DecompressedReader(pa.CompressedInputStream(stream_in, codec))
    try:
        rebatch = _Rebatcher(chunk_rows)
        last: list[pa.RecordBatch] = []  # the last batch with rows
        sequential: pa.NativeFile | None = stream_in if text is None else pa.PythonFile(text, mode="r")
        names: list[str] | None = None  # the header was read already (the parallel part)
        if codec is None:  # quote-free blocks in parallel (q4.csvsplit); the rest sequentially
            blocks = LineBlocks(raw.read, csvsplit.SPLIT_BYTES)
            head = blocks.header()
            if head is not None:
                names = _same_columns(source, csvsplit.header_names(head), table)
                yield from _rows(_parallel_blocks(blocks, names, table), rebatch, last)
            sequential = None if blocks.rest is None else pa.PythonFile(ChainedReader(blocks.rest, raw), "r")
        if sequential is not None:
            yield from _rows(_sequential_csv(source, sequential, table, names), rebatch, last)
        if last:  # before the last chunk goes out: a file ending inside a quote fails
            value = last[0].column(last[0].num_columns - 1)[-1].as_py()
            _check_last_value(source, value, None if text is None else text.tail)
        yield from rebatch.flush()
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _csv_error(source, exc) from None
    except OSError as exc:  # a compressed stream that does not decompress; a plain file's I/O error stays
        if codec is None:
            raise
        raise _compression_error(source, codec, exc) from None
    finally:
        raw.close()
    if digests is not None:
        digests[source] = raw.sha256.hexdigest()


_CSV_CONVERT_KW: dict[str, Any] = {"strings_can_be_null": False, "quoted_strings_can_be_null": False}


def _same_columns(source: Source, names: list[str], table: InputTable) -> list[str]:
    if names != table.schema.names:
        raise InputError(
            "input_columns_differ",
            f"The input {source.name} has other columns than expected; "
            "files read as one table must have the same columns in the same order.",
        )
    return names


def _rows(
    batches: Iterator[pa.RecordBatch], rebatch: _Rebatcher, last: list[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Re-batch ``batches`` to chunk_rows, keeping the last batch with rows in ``last``."""
    for batch in batches:
        if batch.num_rows:
            last[:] = [batch]
        yield from rebatch.add(batch)


def _parallel_blocks(blocks: LineBlocks, names: list[str], table: InputTable) -> Iterator[pa.RecordBatch]:
    """The batches of the quote-free blocks, parsed on worker threads, in block order."""
    convert = pcsv.ConvertOptions(column_types=table.schema, **_CSV_CONVERT_KW)
    workers = available_cpus()

    def parse(block: bytes) -> list[pa.RecordBatch]:
        return csvsplit.parse_block(block, names, MAX_BLOCK_BYTES, convert)

    # one block per worker ahead, plus one: the window bounds memory (~3x SPLIT_BYTES per block)
    for batches in ordered_map(parse, blocks, workers, window=workers + 1, name="q4-csv"):
        yield from batches


def _sequential_csv(
    source: Source, stream: pa.NativeFile, table: InputTable, names: list[str] | None
) -> Iterator[pa.RecordBatch]:
    """pyarrow's streaming reader (quoted newlines followed) over ``stream``: a whole file, or (``names``
    given) the rows after the part parsed in parallel, which starts at a line start."""
    reader = pcsv.open_csv(
        stream,
        # always the full block: a row must fit in one, and the chunk size must not decide whether
        # a long row is readable (blocks sized from chunk_rows were 64 KiB .. 1 MiB)
        read_options=pcsv.ReadOptions(block_size=MAX_BLOCK_BYTES, column_names=names),
        parse_options=PARSE_OPTIONS,
        convert_options=pcsv.ConvertOptions(column_types=table.schema, **_CSV_CONVERT_KW),
    )
    if names is None:
        _same_columns(source, reader.schema.names, table)
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _iter_parquet(
    table: InputTable,
    source: Source,
    chunk_rows: int,
    on_bytes: ProgressCallback | None,
    groups: tuple[int, ...] | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The file's batches; ``groups``: only these row groups (a shard's slice), in file order;
    ``columns``: only these columns (the others' pages are neither read nor decoded)."""
    if groups is not None and not groups:
        return
    schema = table.schema
    if columns is not None:
        wanted = set(columns)
        schema = pa.schema([f for f in table.schema if f.name in wanted])
    pf: pq.ParquetFile | None = None
    file = source.arrow_file()
    try:
        # pre_buffer=False: with it, pyarrow keeps every row group read so far cached (memory grows
        # with the file); a buffered stream reads column chunks piece by piece instead.
        pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        meta = pf.metadata
        chosen = list(range(meta.num_row_groups)) if groups is None else list(groups)
        declared = meta.num_rows if groups is None else sum(meta.row_group(i).num_rows for i in chosen)
        total_rows = max(1, declared)
        size = source.size
        read = 0
        batches = pf.iter_batches(
            batch_size=chunk_rows,
            row_groups=None if groups is None else chosen,
            columns=None if columns is None else schema.names,
        )
        for batch in batches:
            read += batch.num_rows
            if on_bytes is not None:
                on_bytes(int(size * batch.num_rows / total_rows))
            yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        if read != declared:  # pyarrow stops quietly where the pages end
            raise _parquet_lie(source, f"its footer declares {declared:,} rows but its pages hold {read:,}")
        _check_parquet_values(source, pf.metadata, chosen)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, MemoryError):  # out of memory is a crash (retried), not a bad file ...
            lie = _parquet_memory_error(source, pf, exc) if pf is not None else None
            if lie is None:
                raise
            raise lie from None  # ... unless the file asked for more than it can hold
        raise _parquet_error(source, exc) from None
    finally:
        file.close()


class _Rebatcher:
    """Gathers small blocks into chunks of exactly ``chunk_rows`` rows (the last one shorter)."""

    def __init__(self, chunk_rows: int) -> None:
        self.chunk_rows = chunk_rows
        self._parts: list[pa.RecordBatch] = []
        self._rows = 0

    def add(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        start = 0
        while start < batch.num_rows:
            take = min(self.chunk_rows - self._rows, batch.num_rows - start)
            self._parts.append(batch.slice(start, take))
            self._rows += take
            start += take
            if self._rows == self.chunk_rows:
                yield from self.flush()

    def flush(self) -> Iterator[pa.RecordBatch]:
        if self._rows:
            parts, self._parts, self._rows = self._parts, [], 0
            yield parts[0] if len(parts) == 1 else pa.concat_batches(parts)


class Spill:
    """Pass-1 chunks kept in an uncompressed Arrow IPC file in the scratch dir, for pass 2.

    Each chunk is stored with its parsed feature values and rejection reasons, so pass 2
    neither parses the CSV text nor converts the numbers again. Chunks are read back one
    at a time (plain reads, not a memory map, so the resident set stays one chunk).
    """

    def __init__(self, path: Path, schema: pa.Schema, d: int) -> None:
        self.path = path
        self.d = d
        self._columns = len(schema)
        extra = [pa.field(f"__q4_value_{j}", pa.float64()) for j in range(d)]
        self._schema = pa.schema([*schema, *extra, pa.field("__q4_reason", pa.string())])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        # written by a background thread (pyarrow releases the GIL), one chunk queued at most
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="q4-spill"
        )
        self._pending: Future[None] | None = None
        #: bytes of the chunks written so far (their Arrow buffers; the file adds a little framing)
        self.bytes = 0

    def write(self, batch: pa.RecordBatch, block: FeatureBlock) -> None:
        values = [pa.array(block.values[:, j]) for j in range(self.d)]
        if block.all_valid:
            reasons = pa.nulls(batch.num_rows, pa.string())
        else:
            full: list[str | None] = [None] * batch.num_rows
            for i, reason in zip(np.flatnonzero(~block.valid), block.reasons, strict=True):
                full[int(i)] = reason
            reasons = pa.array(full, pa.string())
        stored = pa.RecordBatch.from_arrays([*batch.columns, *values, reasons], schema=self._schema)
        self.bytes += stored.nbytes
        if self._pending is not None:
            self._pending.result()
        assert self._pool is not None, "the spill file is closed"
        self._pending = self._pool.submit(self._writer.write_batch, stored)

    def close(self) -> None:
        if self._pool is None:
            return
        try:
            if self._pending is not None:
                self._pending.result()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
            self._writer.close()
            self._sink.close()

    def discard(self) -> None:
        """Close and delete the spill file (pass 2 then parses the input again)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def chunks(self) -> Iterator[tuple[pa.RecordBatch, FeatureBlock]]:
        with pa.OSFile(str(self.path), "rb") as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                stored = reader.get_batch(i)
                m = stored.num_rows
                values = np.empty((m, self.d), dtype=np.float64, order="F")
                for j in range(self.d):
                    values[:, j] = stored.column(self._columns + j).to_numpy(zero_copy_only=False)
                reason = stored.column(self._columns + self.d)
                if reason.null_count == m:
                    block = FeatureBlock(values, np.ones(m, dtype=bool), [])
                else:
                    valid = reason.is_null().to_numpy(zero_copy_only=False)
                    block = FeatureBlock(values, valid, reason.drop_null().to_pylist())
                columns = stored.columns[: self._columns]
                yield pa.RecordBatch.from_arrays(columns, schema=self._schema_in), block

    @property
    def _schema_in(self) -> pa.Schema:
        return pa.schema(list(self._schema)[: self._columns])


_END = object()


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    pyarrow parses with the GIL released, so the next CSV block is parsed on the other core
    while this thread converts and accumulates the current one. Errors are re-raised here.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_END)
        except BaseException as exc:  # handed to the consumer
            buffer.put(exc)

    worker = threading.Thread(target=produce, name="q4-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
