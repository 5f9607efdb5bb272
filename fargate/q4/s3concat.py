"""One S3 object made of pieces, assembled in S3: a sharded run's CSV row outputs (docs/contract.md,
"Sharded runs") are the header, then every shard's part, in shard order.

A piece is bytes held here (the header) or an object in the same bucket (a shard's part). The result is
one multipart upload: a piece object of at least :data:`MIN_PART_BYTES` is copied server-side with
``UploadPartCopy`` (in ranges of at most 5 GiB, S3's largest copy), never downloaded. S3 wants every part
but the last to be at least 5 MiB, so small pieces are gathered here first: bytes and small objects go
into a buffer that is uploaded as a part once it holds 5 MiB; a large object that follows a partly
filled buffer lends the buffer its first bytes (one ranged GET) and is copied from there. The task thus
downloads at most about 5 MiB per piece, whatever the sizes, and holds at most about 10 MiB; up to
:data:`COPIES_IN_FLIGHT` copies run at once.

:func:`concat` returns the object's size and its pieces' ``{bytes, sha256}`` in order (the sha256 of each
object piece as its writer counted it): MANIFEST.json lists them, since hashing the assembled object would
mean reading it all back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from q4 import aws

#: S3's smallest part (all but the last) and largest copied range.
MIN_PART_BYTES = 5 << 20
MAX_COPY_BYTES = 5 << 30
#: Server-side copies running at once.
COPIES_IN_FLIGHT = 16


@dataclass(frozen=True)
class Piece:
    """Bytes held here (``data``), or the object ``key`` of ``size`` bytes whose sha256 is ``sha256``."""

    data: bytes | None = None
    key: str | None = None
    size: int = 0
    sha256: str | None = None

    @property
    def length(self) -> int:
        return len(self.data) if self.data is not None else self.size

    def listed(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.data).hexdigest() if self.data is not None else self.sha256
        return {"bytes": self.length, "sha256": digest}


class _Upload:
    """The multipart upload being built: parts numbered in order, a buffer of small bytes. Server-side copies
    run on a small pool (a copy of a 5 GiB range takes tens of seconds; one run may have hundreds)."""

    def __init__(self, s3: Any, bucket: str, key: str, content_type: str, min_part: int) -> None:
        self.s3, self.bucket, self.key, self.content_type = s3, bucket, key, content_type
        self.min_part = min_part
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any] | Future[dict[str, Any]]] = []
        self.pool: ThreadPoolExecutor | None = None

    def _start(self) -> str:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )["UploadId"]
        return self.upload_id

    def flush(self) -> None:
        """Upload the buffer as the next part."""
        number = len(self.parts) + 1
        response = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._start(),
            PartNumber=number,
            Body=bytes(self.buffer),
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self.buffer = bytearray()

    def add(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.min_part:
            self.flush()

    def copy(self, key: str, start: int, end: int, max_copy: int) -> None:
        """Copy bytes ``[start, end)`` of ``key`` as parts (the buffer is empty)."""
        count = math.ceil((end - start) / max_copy)
        step = math.ceil((end - start) / count)
        upload_id = self._start()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=COPIES_IN_FLIGHT, thread_name_prefix="q4-s3-copy")
        for first in range(start, end, step):
            number = len(self.parts) + 1
            byte_range = f"bytes={first}-{min(end, first + step) - 1}"
            self.parts.append(self.pool.submit(self._copy_part, upload_id, number, key, byte_range))

    def _copy_part(self, upload_id: str, number: int, key: str, byte_range: str) -> dict[str, Any]:
        response = self.s3.upload_part_copy(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": key},
            CopySourceRange=byte_range,
        )
        return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

    def read(self, key: str, start: int, end: int) -> bytes:
        response = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        data = bytes(response["Body"].read())
        if len(data) != end - start:
            raise OSError(f"s3://{self.bucket}/{key} gave {len(data)} bytes for a range of {end - start}")
        return data

    def complete(self) -> None:
        if self.upload_id is None:  # everything fit in the buffer: one object
            self.s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), ContentType=self.content_type
            )
            return
        if self.buffer or not self.parts:
            self.flush()  # the last part may be small
        parts = [part.result() if isinstance(part, Future) else part for part in self.parts]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
        )
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def abort(self) -> None:
        self.close()
        if self.upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


def concat(
    s3: Any,
    bucket: str,
    key: str,
    pieces: Sequence[Piece],
    content_type: str,
    *,
    min_part: int = MIN_PART_BYTES,
    max_copy: int = MAX_COPY_BYTES,
) -> dict[str, Any]:
    """Write ``key`` as the concatenation of ``pieces``; returns ``{bytes, parts: [{bytes, sha256}]}``.

    Nothing appears at ``key`` unless every piece went in: a failure aborts the upload and raises (AWS
    errors as :func:`q4.aws.aws_errors` makes them)."""
    upload = _Upload(s3, bucket, key, content_type, min_part)
    with aws.aws_errors(f"assemble s3://{bucket}/{key}"):
        try:
            for piece in pieces:
                _add(upload, piece, min_part, max_copy)
            upload.complete()
        except BaseException:
            upload.abort()
            raise
    listed = [piece.listed() for piece in pieces if piece.length]
    return {"bytes": sum(p["bytes"] for p in listed), "parts": listed}


def _add(upload: _Upload, piece: Piece, min_part: int, max_copy: int) -> None:
    if piece.data is not None:
        upload.add(piece.data)
        return
    assert piece.key is not None
    size, start = piece.size, 0
    if upload.buffer:
        need = min_part - len(upload.buffer)
        if size - need < min_part:  # too small to copy the rest: take it all here
            if size:
                upload.add(upload.read(piece.key, 0, size))
            return
        upload.add(upload.read(piece.key, 0, need))  # fills the buffer: uploaded as a part
        start = need
    if size - start >= min_part:
        upload.copy(piece.key, start, size, max_copy)
    elif size > start:
        upload.add(upload.read(piece.key, start, size))
