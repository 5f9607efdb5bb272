"""CSV text cut into line-aligned blocks that worker threads parse in parallel, with an exact fallback.

One reader takes the file's bytes sequentially (so the file is read once, front to back, hashed and
counted for progress as it goes), cuts them into blocks of about :data:`SPLIT_BYTES` that end just
after a ``\\n``, and worker threads parse the blocks, each with its own single-threaded pyarrow reader
and the column names given; the batches come back in block order (:func:`q4.parallel.ordered_map`).

A ``\\n`` ends a row unless it lies inside a quoted value, and only a block holding a ``"`` can have
one. So the rule is exact: blocks are cut and parsed in parallel as long as they hold no ``"`` (and a
``\\n`` at all); the first block holding one ends the parallel part, and everything from that block's
start (a true line start: no block before it had a quote) is read by the sequential streaming reader,
which follows quoted newlines (:class:`LineBlocks` keeps those bytes in ``rest``). A header line holding
a ``"`` or a lone CR sends the whole file to the sequential reader.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv

#: Bytes per parallel block (cut at the next line end).
SPLIT_BYTES = 8 << 20
_QUOTE, _LF, _CR = b'"', b"\n", b"\r"


class LineBlocks:
    """Line-aligned, quote-free blocks of a byte stream read with ``read(n)``.

    :meth:`header` takes the first line; iterating yields the blocks after it. Iteration stops at the
    end of the stream, or before the first block holding a quote or no line end at all: then ``rest``
    holds the bytes read but not yielded (they start at a line start), and the caller reads them, then the
    rest of the stream, sequentially.
    """

    def __init__(self, read: Callable[[int], bytes], block_bytes: int = SPLIT_BYTES) -> None:
        self._read = read
        self._block_bytes = block_bytes
        self._buffer = b""
        self._eof = False
        self.rest: bytes | None = None

    def _fill(self, n: int) -> None:
        while not self._eof and len(self._buffer) < n:
            data = self._read(max(n - len(self._buffer), 1 << 16))
            if not data:
                self._eof = True
            self._buffer += data

    def header(self) -> bytes | None:
        """The first line with its line end; None (and everything left in ``rest``) when it holds a quote
        or a lone CR, or no line end within a block."""
        self._fill(self._block_bytes)
        end = self._buffer.find(_LF, 0, self._block_bytes)
        head = self._buffer[: end + 1] if end >= 0 else self._buffer
        if end < 0 or _QUOTE in head or _CR in head[:-2]:
            self.rest, self._buffer = self._buffer, b""
            return None
        self._buffer = self._buffer[end + 1 :]
        return head

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self._fill(self._block_bytes)
            if not self._buffer:
                return
            if self._eof and len(self._buffer) <= self._block_bytes:
                block, cut = self._buffer, len(self._buffer)  # the last block: to the end of the file
            else:
                cut = self._buffer.rfind(_LF, 0, self._block_bytes) + 1
                block = self._buffer[:cut]
            if cut == 0 or _QUOTE in block:
                self.rest, self._buffer = self._buffer, b""
                return
            self._buffer = self._buffer[cut:]
            yield block


class ChainedReader(io.RawIOBase):
    """``first`` (bytes already read), then the rest of ``stream``: a readable raw file for pyarrow."""

    def __init__(self, first: bytes, stream: Any) -> None:
        self._first = memoryview(first)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if len(self._first):
            n = min(len(buffer), len(self._first))
            buffer[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        return int(self._stream.readinto(buffer) or 0)


def parse_block(
    block: bytes, names: list[str], block_size: int, convert: pcsv.ConvertOptions
) -> list[pa.RecordBatch]:
    """The rows of one quote-free block (no header line), every column as ``convert`` says, on this
    thread only (``use_threads=False``: the parallelism is across blocks)."""
    table = pcsv.read_csv(
        pa.BufferReader(block),
        read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=block_size),
        convert_options=convert,
    )
    return table.to_batches()


def header_names(head: bytes) -> list[str]:
    """The column names of a header line (the byte order mark skipped, as pyarrow does)."""
    return list(pcsv.read_csv(pa.BufferReader(head)).schema.names)
