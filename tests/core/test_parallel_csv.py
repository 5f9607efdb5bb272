"""q4.csvsplit: CSV cut into line-aligned, quote-free blocks parsed in parallel, the rest (from the first
block holding a quote) read sequentially; the job's results are the same bytes whatever the block size,
for files with quoted newlines, CRLF, a byte order mark, blank lines, no final newline."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from q4 import JobSpec, csvsplit, run_job
from q4.csvsplit import ChainedReader, LineBlocks
from q4.errors import InputError


def _blocks(data: bytes, size: int) -> tuple[bytes | None, list[bytes], bytes | None]:
    blocks = LineBlocks(io.BytesIO(data).read, size)
    head = blocks.header()
    return head, list(blocks), blocks.rest


def test_blocks_are_line_aligned_and_cover_the_file() -> None:
    data = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(500)) + b"7,8"
    for size in (16, 100, 1 << 20):
        head, blocks, rest = _blocks(data, size)
        assert head == b"a,b\n" and rest is None
        assert head + b"".join(blocks) == data
        assert all(b.endswith(b"\n") for b in blocks[:-1]) and blocks[-1].endswith(b"7,8")
        assert all(len(b) <= size for b in blocks)
    head, blocks, rest = _blocks(data, 8)  # a line longer than a block: from there, sequentially
    assert head == b"a,b\n" and rest is not None and head + b"".join(blocks) + rest == data


def test_the_first_block_with_a_quote_and_what_follows_are_left_in_rest() -> None:
    rows = [b"%d,x\n" % i for i in range(100)]
    rows[60] = b'60,"two\nlines"\n'
    data = b"a,b\n" + b"".join(rows)
    head, blocks, rest = _blocks(data, 32)
    assert head == b"a,b\n" and rest is not None
    assert head + b"".join(blocks) + rest == data  # rest starts where the yielded blocks end: a line start
    assert b'"' not in b"".join(blocks) and b'"' in rest[:40]
    assert rest.startswith(b"5") or rest.startswith(b"6")


@pytest.mark.parametrize(
    "data",
    [b'"a",b\n1,2\n', b"a\rb,c\r1,2\r", b"a," + b"x" * 100 + b"\n1,2\n"],
    ids=["quoted header", "lone CR", "no line end within a block"],
)
def test_a_header_that_cannot_be_split_sends_everything_to_rest(data: bytes) -> None:
    head, blocks, rest = _blocks(data, 64)
    assert head is None and blocks == [] and rest == data


def test_a_chained_reader_gives_the_kept_bytes_then_the_stream() -> None:
    chained = ChainedReader(b"abc", io.BytesIO(b"defgh"))
    assert chained.read(2) == b"ab" and chained.read(5) == b"c" and chained.read() == b"defgh"


#: A quoted value spanning many lines: a block cut at its last line end would cut inside it.
LATE = b'"late\r\n' + b"x\n" * 40 + b'quoted, value"'


def _table(rng: np.random.Generator, newline: bytes = b"\n", bom: bool = False) -> bytes:
    x = rng.standard_normal((700, 3)) @ rng.standard_normal((3, 3))
    lines = [b"id,note,a,b,c"]
    for i, row in enumerate(x):
        note = b"n%d" % i
        if i == 650:
            note = LATE  # a quote near the end: the parallel part stops there
        values = [repr(float(v)).encode() for v in row]
        if i % 97 == 3:
            values[1] = b"oops"
        lines.append(b",".join([b"%d" % i, note, *values]))
        if i % 211 == 7:
            lines.append(b"")  # a blank line: skipped either way
    return (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines)  # no final line end


@pytest.mark.parametrize(("newline", "bom"), [(b"\n", False), (b"\r\n", True)])
def test_the_job_gives_the_same_bytes_whatever_the_block_size(tmp_path, rng, monkeypatch, newline, bom):
    src = tmp_path / "t.csv"
    src.write_bytes(_table(rng, newline, bom))
    monkeypatch.setenv("Q4_CPUS", "3")
    digests = []
    for size in (64, 4096, 1 << 30):  # many blocks, a few, one (all before the quote)
        monkeypatch.setattr(csvsplit, "SPLIT_BYTES", size)
        result = run_job([src], tmp_path / f"s{size}" / "run=r", JobSpec(run_id="r", chunk_rows=50))
        digests.append({a.key: a.sha256 for a in result.artifacts})
        assert result.input["sha256"] == [hashlib.sha256(src.read_bytes()).hexdigest()]
        assert result.rows["input"] == 700 and result.rows["rejected"] == 8
    assert digests[0] == digests[1] == digests[2]
    kept = b"".join(
        (tmp_path / "s64" / "run=r" / "output" / f"Q_{n}.csv").read_bytes() for n in ("keep", "discard")
    )
    assert LATE in kept


def test_a_malformed_row_in_a_parallel_block_is_the_same_error(tmp_path, monkeypatch):
    rows = [b"%d,%d.5,%d" % (i, i, -i) for i in range(400)]
    rows[300] += b",extra"
    src = tmp_path / "bad.csv"
    src.write_bytes(b"a,b,c\n" + b"\n".join(rows) + b"\n")
    messages = []
    for size in (128, 1 << 30):
        monkeypatch.setattr(csvsplit, "SPLIT_BYTES", size)
        with pytest.raises(InputError) as caught:
            run_job([src], tmp_path / f"s{size}" / "run=r", JobSpec(run_id="r"))
        assert caught.value.code == "malformed_csv"
        messages.append(caught.value.message)
    assert messages[0] == messages[1] and "bad.csv" in messages[0]
