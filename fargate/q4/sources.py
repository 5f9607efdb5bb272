"""Where an input table's bytes come from: a :class:`Source` per input file.

The table reader (:mod:`q4.tables`) reads every input through a Source, never through a path: a local
file (:class:`LocalSource`, the ``q4 run`` CLI and the tests) and an S3 object streamed with ranged GETs
(:class:`q4.s3io.S3Source`, the Fargate task) are read by the same code, with the same checks and the
same messages. A Source names itself twice: ``name`` (the base name, for the one-sentence messages) and
``label`` (the full path or ``s3://bucket/key``, for error details and default input names).
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

#: Bytes per read when a Source is hashed on its own (Parquet inputs, whose reader seeks).
HASH_READ_BYTES = 8 << 20


class Source(ABC):
    """One input file's bytes: sized, openable as a seekable binary file, and as a pyarrow file."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The file's base name, as the one-sentence messages name it."""

    @property
    @abstractmethod
    def label(self) -> str:
        """The file's full name (a path, or ``s3://bucket/key``), for error details."""

    @property
    @abstractmethod
    def size(self) -> int:
        """The file's size in bytes."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the file is there to be read (a regular file, for a local path)."""

    @abstractmethod
    def open(self) -> io.RawIOBase:
        """A new seekable, unbuffered binary file (``read``, ``readinto``, ``seek``, ``tell``)."""

    def arrow_file(self) -> pa.NativeFile:
        """A new pyarrow random-access file over the bytes (Parquet, compressed CSV streams)."""
        return pa.PythonFile(self.open(), mode="r")

    def sha256(self) -> str:
        """Hex sha256 of the bytes, read sequentially from the start."""
        digest = hashlib.sha256()
        with self.open() as f:
            while block := f.read(HASH_READ_BYTES):
                digest.update(block)
        return digest.hexdigest()


@dataclass(frozen=True)
class LocalSource(Source):
    """A local file. pyarrow reads it natively (``pa.OSFile``), so local reading keeps its speed."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def exists(self) -> bool:
        return self.path.is_file()

    def open(self) -> io.RawIOBase:
        return self.path.open("rb", buffering=0)

    def arrow_file(self) -> pa.NativeFile:
        return pa.OSFile(str(self.path), "rb")

    def sha256(self) -> str:
        with self.path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


def as_source(item: Source | Path | str) -> Source:
    """A Source as is; a path (``Path`` or ``str``) as a :class:`LocalSource`."""
    return item if isinstance(item, Source) else LocalSource(Path(item))


def as_sources(items: Sequence[Source | Path | str]) -> tuple[Source, ...]:
    """:func:`as_source` over a sequence (callers that still pass paths: ``q4 run``, the tests)."""
    return tuple(as_source(item) for item in items)
