"""q4.s3concat against a real moto server: the assembled object is exactly the pieces' bytes in order,
whatever their sizes (S3 refuses parts under 5 MiB but the last), and a failure leaves nothing."""

from __future__ import annotations

import hashlib
import random
import uuid

import boto3
import pytest
from q4.errors import TransientError
from q4.s3concat import MIN_PART_BYTES, Piece, concat

MiB = 1 << 20


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    name = f"q4-concat-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _pieces(bucket: str, sizes: list[int | bytes], seed: int) -> tuple[list[Piece], bytes]:
    s3, rng = boto3.client("s3"), random.Random(seed)
    pieces, whole = [], b""
    for i, size in enumerate(sizes):
        if isinstance(size, bytes):
            pieces.append(Piece(data=size))
            whole += size
            continue
        body = rng.randbytes(size)
        s3.put_object(Bucket=bucket, Key=f"parts/{i}", Body=body)
        pieces.append(Piece(key=f"parts/{i}", size=size, sha256=hashlib.sha256(body).hexdigest()))
        whole += body
    return pieces, whole


@pytest.mark.parametrize(
    "sizes",
    [
        [b"a,b\n", 3 * MiB, 7 * MiB, 0, 12 * MiB + 5, 1000],  # small, large, empty, large, small last
        [b"h\n", 100, 200, 300],  # all small: one object
        [6 * MiB, 6 * MiB],  # large pieces only: copied
        [b"x" * (5 * MiB - 3), 5 * MiB + 2, 4],  # a buffer short by 3 bytes, then an object just large enough
        [b"", 0],  # nothing at all
    ],
)
def test_the_object_is_the_pieces_in_order(bucket: str, sizes: list[int | bytes]) -> None:
    pieces, whole = _pieces(bucket, sizes, seed=len(sizes))
    result = concat(boto3.client("s3"), bucket, "out/all.csv", pieces, "text/csv")
    got = boto3.client("s3").get_object(Bucket=bucket, Key="out/all.csv")
    assert got["Body"].read() == whole and got["ContentType"] == "text/csv"
    assert result["bytes"] == len(whole)
    assert result["parts"] == [p.listed() for p in pieces if p.length]


def test_a_large_piece_is_copied_in_ranges_not_read(bucket: str) -> None:
    pieces, whole = _pieces(bucket, [b"head\n", 2 * MiB, 23 * MiB], seed=3)
    s3 = boto3.session.Session().client("s3")  # its own event hooks
    read: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject",
        lambda params, **_: read.append(params.get("Range")) if "Range" in params else None,
    )
    concat(s3, bucket, "out/big.csv", pieces, "text/csv", max_copy=6 * MiB)
    assert s3.get_object(Bucket=bucket, Key="out/big.csv")["Body"].read() == whole
    # ranged GETs (the hook may see other clients' calls): the 2 MiB piece is read whole, the 23 MiB one
    # only for the buffer's missing bytes
    assert read == [f"bytes=0-{2 * MiB - 1}", f"bytes=0-{MIN_PART_BYTES - 5 - 2 * MiB - 1}"]


def test_a_missing_piece_leaves_no_object_and_no_upload(bucket: str) -> None:
    pieces, _ = _pieces(bucket, [6 * MiB], seed=4)
    s3 = boto3.client("s3")
    gone = Piece(key="parts/none", size=6 * MiB, sha256="0" * 64)
    with pytest.raises((TransientError, Exception)):
        concat(s3, bucket, "out/x.csv", [*pieces, gone], "text/csv")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="out/").get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
