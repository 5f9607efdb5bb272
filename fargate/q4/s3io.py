"""Streaming S3 objects in and out of the task: no input is downloaded to scratch, no row output is
written to scratch before it goes up.

:class:`S3Reader` is a seekable, unbuffered file over one object. Read sequentially (a CSV parse, a
hash) it fetches the object in aligned parts of :data:`PART_BYTES` with ranged GETs, :data:`READ_AHEAD`
parts ahead in parallel, so the parse never waits on one stream (one GET stream gives ~85-90 MB/s on
AWS) once a streak of sequential reads has passed one part; read at random (a Parquet footer, a column
chunk) or at the start of a streak it fetches exactly the bytes asked for with one ranged GET, so a
Parquet column chunk smaller than a part is not read ahead by several parts (it was: ~20x the bytes).
Memory stays at most ``(READ_AHEAD + 1) x PART_BYTES`` per reader. Every GET
carries the ETag the object had when it was listed (``IfMatch``): an object replaced while the task reads
it fails the read instead of mixing two versions.

:class:`S3Writer` is a writable file that goes up as a multipart upload while it is written: parts of
:data:`PART_BYTES` are uploaded from a small pool while the writer goes on (at most
:data:`PARTS_IN_FLIGHT` parts queued), its sha256 and byte count are computed on the fly, the upload is
completed on :meth:`S3Writer.close` and aborted on :meth:`S3Writer.abort` (nothing half-written becomes
visible). An object smaller than one part goes up as one ``put_object``.

AWS failures surface as :func:`q4.aws.aws_errors` makes them: a :class:`q4.errors.TransientError` (the task
exits as a crash and is retried) or a :class:`q4.aws.ConfigurationError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from q4 import aws
from q4.errors import TransientError
from q4.sources import Source

#: Bytes per ranged GET when reading sequentially, and per uploaded part (S3 allows 5 MiB .. 5 GiB).
PART_BYTES = 8 << 20
#: Parts fetched ahead of the one being read, in parallel, when reading sequentially.
READ_AHEAD = 4
#: Parts an S3Writer may have queued or uploading while the writer goes on.
PARTS_IN_FLIGHT = 2
#: The smallest part S3 accepts (every part of a multipart upload but the last).
MIN_PART_BYTES = 5 << 20


def _replaced(bucket: str, key: str) -> TransientError:
    return TransientError(
        "aws_error",
        f"The object s3://{bucket}/{key} was replaced while the task read it (its ETag changed); the run is "
        "retried and reads the new object from its start.",
        {"code": "PreconditionFailed"},
    )


def get_range(s3: Any, bucket: str, key: str, etag: str | None, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the object, refused if its ETag is no longer ``etag``."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
    if etag:
        args["IfMatch"] = f'"{etag}"'
    try:
        with aws.aws_errors(f"read s3://{bucket}/{key}"):
            data: bytes = s3.get_object(**args)["Body"].read()
    except TransientError as exc:
        if exc.details.get("code") in ("PreconditionFailed", "412"):
            raise _replaced(bucket, key) from None
        raise
    if len(data) != end - start:  # an object shortened since it was listed
        raise _replaced(bucket, key)
    return data


class S3Reader(io.RawIOBase):
    """A seekable binary file over one S3 object (see the module's docstring)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        size: int,
        etag: str | None,
        *,
        part_bytes: int = PART_BYTES,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self._s3, self._bucket, self._key = s3, bucket, key
        self._size, self._etag = size, etag
        self._part = part_bytes
        self._ahead = read_ahead
        self._pos = 0
        self._last_end = -1  # where the previous read ended: a read starting there is sequential
        self._streak = 0  # bytes read sequentially up to _last_end
        self._parts: dict[int, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: bytes fetched from S3 so far (read-ahead included)
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        start = self._pos
        if start != self._last_end:  # a jump: what was read ahead is not needed
            self._streak = 0
            for index in list(self._parts):
                self._parts.pop(index).cancel()
        if self._streak >= self._part:  # a long sequential streak: from the parts, fetched ahead
            n = self._from_parts(view, start, n)
        else:  # random access, or a streak's start: exactly the bytes asked for, in one GET
            view[:n] = get_range(self._s3, self._bucket, self._key, self._etag, start, start + n)
            self._count(n)
        self._pos = self._last_end = start + n
        self._streak += n
        return n

    def _count(self, n: int) -> None:
        with self._lock:
            self.fetched += n

    def _from_parts(self, view: memoryview, start: int, n: int) -> int:
        index = start // self._part
        for old in [i for i in self._parts if i < index]:
            self._parts.pop(old).cancel()
        last = (self._size - 1) // self._part
        for i in range(index, min(index + self._ahead, last) + 1):
            if i not in self._parts:
                self._parts[i] = self._executor().submit(self._fetch, i)
        data = self._parts[index].result()
        offset = start - index * self._part
        n = min(n, len(data) - offset)
        view[:n] = memoryview(data)[offset : offset + n]
        return n

    def _fetch(self, index: int) -> bytes:
        start = index * self._part
        end = min(start + self._part, self._size)
        data = get_range(self._s3, self._bucket, self._key, self._etag, start, end)
        self._count(len(data))
        return data

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self._ahead), thread_name_prefix="q4-s3-get")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            for future in self._parts.values():
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._parts.clear()
        super().close()


@dataclass(frozen=True)
class S3Source(Source):
    """An input object read in place with an :class:`S3Reader` (``size`` and ``etag`` as listed)."""

    s3: Any = field(compare=False, repr=False)
    bucket: str
    key: str
    object_size: int
    etag: str | None = None
    part_bytes: int = field(default=PART_BYTES, compare=False)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def size(self) -> int:
        return self.object_size

    def exists(self) -> bool:
        return True  # listed: a vanished object fails its first read

    def open(self) -> S3Reader:
        return S3Reader(
            self.s3, self.bucket, self.key, self.object_size, self.etag, part_bytes=self.part_bytes
        )


class S3Writer(io.RawIOBase):
    """A writable file that becomes one S3 object (see the module's docstring)."""

    def __init__(
        self, s3: Any, bucket: str, key: str, content_type: str, *, part_bytes: int = PART_BYTES
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"parts must be at least {MIN_PART_BYTES} bytes, not {part_bytes}")
        self._s3, self.bucket, self.key, self.content_type = s3, bucket, key, content_type
        self._part = part_bytes
        self._buffer = bytearray()
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.sha256: str | None = None  # set once the object is complete
        self._upload_id: str | None = None
        self._parts: deque[tuple[int, Future[str]]] = deque()
        self._done: list[dict[str, Any]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._finished = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.bytes

    def write(self, data: Any) -> int:
        if self._finished:
            raise ValueError("write to a closed S3Writer")
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self._buffer += view
        self.bytes += len(view)
        while len(self._buffer) >= self._part:
            part = bytes(self._buffer[: self._part])
            del self._buffer[: self._part]
            self._send(part)
        return len(view)

    def _send(self, part: bytes) -> None:
        with aws.aws_errors(f"upload s3://{self.bucket}/{self.key}"):
            if self._upload_id is None:
                self._upload_id = self._s3.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, ContentType=self.content_type
                )["UploadId"]
            while len(self._parts) >= PARTS_IN_FLIGHT:
                self._finish_oldest()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="q4-s3-put")
        number = len(self._done) + len(self._parts) + 1
        self._parts.append((number, self._pool.submit(self._upload_part, number, part)))

    def _upload_part(self, number: int, part: bytes) -> str:
        response = self._s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=part
        )
        return str(response["ETag"])

    def _finish_oldest(self) -> None:
        number, future = self._parts.popleft()
        self._done.append({"PartNumber": number, "ETag": future.result()})

    def close(self) -> None:
        """Complete the object (the last part, or one put_object); on any failure abort it and raise."""
        if self._finished:
            return
        try:
            with aws.aws_errors(f"upload s3://{self.bucket}/{self.key}"):
                if self._upload_id is None:
                    self._s3.put_object(
                        Bucket=self.bucket,
                        Key=self.key,
                        Body=bytes(self._buffer),
                        ContentType=self.content_type,
                    )
                else:
                    if self._buffer:
                        self._send(bytes(self._buffer))
                    while self._parts:
                        self._finish_oldest()
                    self._s3.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=self.key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._done},
                    )
        except BaseException:
            self.abort()
            raise
        self._buffer = bytearray()
        self.sha256 = self._sha.hexdigest()
        self._end()

    def abort(self) -> None:
        """Drop what was written: no object appears, no multipart upload is left pending."""
        if self._finished:
            return
        for _, future in self._parts:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None:
            with aws.aws_errors(f"abort the upload of s3://{self.bucket}/{self.key}"):
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
        self._buffer = bytearray()
        self._end()

    def __del__(self) -> None:
        # io's finalizer would close(), completing a half-written object: a writer dropped unclosed aborts
        if not getattr(self, "_finished", True):
            with contextlib.suppress(Exception):
                self.abort()

    def _end(self) -> None:
        self._finished = True
        self._parts.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        super().close()
