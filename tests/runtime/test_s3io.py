"""q4.s3io against a real moto server over HTTP: the ranged reader returns the object's exact bytes however
it is read, the multipart writer's object is exactly the bytes written, an aborted write leaves nothing."""

from __future__ import annotations

import gc
import hashlib
import random
import uuid

import boto3
import pytest
from q4 import s3io
from q4.errors import TransientError
from q4.s3io import S3Reader, S3Source, S3Writer

PART = 5 << 20  # the smallest part S3 accepts: the tests cross part boundaries with few bytes


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    name = f"q4-s3io-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _put(bucket: str, key: str, body: bytes) -> str:
    return str(boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


def _object(bucket: str, key: str) -> bytes:
    return bytes(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def test_the_reader_returns_the_exact_bytes_for_random_seeks_and_reads_across_parts(bucket: str) -> None:
    body = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)
    etag = _put(bucket, "in/x.bin", body)
    s3 = boto3.client("s3")
    part = 1 << 20  # small parts (reading has no minimum): many boundaries in a 3 MiB object
    rng = random.Random(11)
    with S3Reader(s3, bucket, "in/x.bin", len(body), etag, part_bytes=part, read_ahead=2) as reader:
        assert reader.read() == body  # sequential, read-ahead
        for _ in range(25):
            start = rng.choice([0, part - 1, part, 2 * part + 5, len(body) - 3, rng.randrange(len(body))])
            n = rng.choice([1, 7, part - 1, part + 1, 2 * part + 3, rng.randrange(1, 300_000)])
            reader.seek(start)
            got = b""
            while len(got) < n and (piece := reader.read(min(n - len(got), 65536))):
                got += piece
            assert got == body[start : start + n], (start, n)
        reader.seek(-10, 2)
        assert reader.tell() == len(body) - 10 and reader.read(100) == body[-10:] and reader.read(5) == b""
        reader.seek(len(body) + 5)
        assert reader.read(3) == b""


def test_short_runs_of_reads_fetch_what_they_read_not_parts_ahead(bucket: str) -> None:
    """A Parquet reader reads column chunks: a jump then a few buffered reads. Those fetch only the bytes
    read; a long sequential run (a CSV) is read ahead in parts."""
    body = random.Random(5).randbytes(6 * 1024 * 1024)
    etag = _put(bucket, "in/cols.bin", body)
    part = 1 << 20
    with S3Reader(boto3.client("s3"), bucket, "in/cols.bin", len(body), etag, part_bytes=part) as reader:
        for start in (4 * part + 3, 17, 2 * part + 100, 5 * part):  # four "column chunks" of 300 KiB
            reader.seek(start)
            got = b"".join(reader.read(100 * 1024) for _ in range(3))
            assert got == body[start : start + 300 * 1024]
        assert reader.fetched == 4 * 300 * 1024
    with S3Reader(boto3.client("s3"), bucket, "in/cols.bin", len(body), etag, part_bytes=part) as reader:
        assert b"".join(iter(lambda: reader.read(256 * 1024), b"")) == body
        assert reader.fetched == len(body)  # read ahead, every byte fetched once


def test_a_replaced_object_fails_the_read_instead_of_mixing_versions(bucket: str) -> None:
    body = random.Random(3).randbytes(2 * 1024 * 1024)
    etag = _put(bucket, "in/x.bin", body)
    s3 = boto3.client("s3")
    with S3Reader(s3, bucket, "in/x.bin", len(body), etag, part_bytes=1 << 20, read_ahead=0) as reader:
        assert reader.read(10) == body[:10]
        _put(bucket, "in/x.bin", b"y" * len(body))
        reader.seek(1 << 20)
        with pytest.raises(TransientError, match="was replaced while the task read it"):
            reader.read(10)


def test_a_source_hashes_the_object_as_streamed(bucket: str) -> None:
    body = random.Random(5).randbytes(s3io.PART_BYTES + 777)
    etag = _put(bucket, "in/t.csv", body)
    source = S3Source(boto3.client("s3"), bucket, "in/t.csv", len(body), etag)
    assert source.name == "t.csv" and source.label == f"s3://{bucket}/in/t.csv" and source.size == len(body)
    assert source.sha256() == hashlib.sha256(body).hexdigest()


def _no_pending_uploads(bucket: str) -> bool:
    return not boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize("size", [0, 1000, PART - 1, PART, 3 * PART + 17], ids=lambda n: f"{n}B")
def test_the_writer_object_equals_the_bytes_written(bucket: str, size: int) -> None:
    body = random.Random(size).randbytes(size)
    with S3Writer(boto3.client("s3"), bucket, "out/x.csv", "text/csv", part_bytes=PART) as writer:
        rng = random.Random(1)
        at = 0
        while at < size:  # writes of uneven sizes, some larger than a part
            step = rng.choice([1, 1000, 65536, PART + 3])
            assert writer.write(body[at : at + step]) == len(body[at : at + step])
            at += step
            assert writer.tell() == min(at, size)
    assert _object(bucket, "out/x.csv") == body
    assert writer.bytes == size and writer.sha256 == hashlib.sha256(body).hexdigest()
    head = boto3.client("s3").head_object(Bucket=bucket, Key="out/x.csv")
    assert head["ContentType"] == "text/csv"
    assert ("-" in head["ETag"]) == (size >= PART)  # multipart only from one full part on
    assert _no_pending_uploads(bucket)


@pytest.mark.parametrize("size", [1000, 2 * PART + 5], ids=["small", "multipart"])
def test_an_aborted_write_leaves_no_object_and_no_pending_upload(bucket: str, size: int) -> None:
    writer = S3Writer(boto3.client("s3"), bucket, "out/y.csv", "text/csv", part_bytes=PART)
    writer.write(b"z" * size)
    writer.abort()
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/")
    assert _no_pending_uploads(bucket)
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_a_writer_dropped_unclosed_does_not_complete_its_object(bucket: str) -> None:
    writer = S3Writer(boto3.client("s3"), bucket, "out/z.csv", "text/csv", part_bytes=PART)
    writer.write(b"z" * (PART + 1))
    del writer
    gc.collect()
    # never completed (a task killed mid-write leaves its upload pending: the bucket's lifecycle rule ends it)
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="out/")


def test_a_failed_upload_aborts_and_raises_a_transient_error(bucket: str) -> None:
    writer = S3Writer(boto3.client("s3"), f"{bucket}-missing", "out/x.csv", "text/csv", part_bytes=PART)
    writer.write(b"a" * 100)
    with pytest.raises(Exception) as excinfo:
        writer.close()
    assert excinfo.value.__class__.__name__ in ("ConfigurationError", "TransientError")
    assert writer.closed
