"""Hostile tables through the real ``run_job``: CSVs with quotes, embedded newlines, BOMs, control and
unicode characters, mixed types; Parquet files of every column type, truncated or corrupted; random bytes.

For every input: ``run_job`` succeeds or raises a :class:`q4.errors.Q4Error` (one sentence), nothing else;
every file written lands under ``OUT/run=<id>/`` (the scratch dir is left empty, the input dir untouched);
and a succeeded run puts every input row in exactly one of keep / discard / rejected, values unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from q4 import tables
from q4.errors import Q4Error
from q4.job import JobSpec, RunResult, run_job
from q4.tables import iter_batches, open_inputs, unclosed_quote

HOSTILE = settings.get_profile("hostile")
RUN_ID = "h"
RESERVED = {"q4_row", "q4_quadrant", "q4_score1", "q4_score2", "q4_reason"}
#: What the core accepts as a number (docs/decisions/core.md), ASCII digits only.
NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))", re.ASCII)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Q4_SCRATCH_DIR for the module: spill files must go there and be gone afterwards."""
    path = tmp_path_factory.mktemp("scratch")
    old = os.environ.get("Q4_SCRATCH_DIR")
    os.environ["Q4_SCRATCH_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["Q4_SCRATCH_DIR"]
    else:
        os.environ["Q4_SCRATCH_DIR"] = old


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def run_hostile(inputs: list[Path], work: Path, scratch: Path, **spec: Any) -> RunResult | Q4Error:
    """Run the real job; check the no-crash and no-escape properties whatever happens."""
    input_dir = inputs[0].parent
    before = {p: p.read_bytes() for p in files_under(input_dir)}
    out = work / "out"
    try:
        outcome: RunResult | Q4Error = run_job(inputs, out / f"run={RUN_ID}", JobSpec(run_id=RUN_ID, **spec))
    except Q4Error as exc:  # anything else fails the test: a crash
        outcome = exc
        assert exc.message.endswith(".") and "\n" not in exc.message, exc.message
        assert "Traceback" not in exc.message
        _event(f"error: {exc.code}")
    else:
        _event("succeeded")
    assert {p.relative_to(out).parts[0] for p in out.rglob("*")} <= {f"run={RUN_ID}"}
    assert list(scratch.iterdir()) == []  # spill files cleaned up, nothing else written there
    assert {p: p.read_bytes() for p in files_under(input_dir)} == before  # inputs never modified
    if isinstance(outcome, Q4Error):  # a failed run leaves nothing that looks like results
        assert files_under(out) == set()
    return outcome


def _event(name: str) -> None:
    """Count outcomes in hypothesis' statistics (a no-op in plain tests)."""
    with contextlib.suppress(InvalidArgument):
        event(name)


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """An output CSV read with Python's own RFC 4180 reader (independent of pyarrow)."""
    csv.field_size_limit(1 << 30)  # the default 128 KiB per field is Python's limit, not ours
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def check_partition_csv(result: RunResult, header: list[str], rows: list[list[str]]) -> None:
    """Every input row in exactly one output, in input order, every input value unchanged (as text)."""
    output = result.run_dir / "output"
    features = set(_study(result)["features"])
    seen: dict[int, str] = {}
    for name in ("keep", "discard", "rejected"):
        out_header, out_rows = read_csv_rows(output / f"Q_{name}.csv")
        extra = (
            ["q4_row", "q4_reason"]
            if name == "rejected"
            else ["q4_row", "q4_quadrant", "q4_score1", "q4_score2"]
        )
        assert out_header == header + extra
        order = [int(r[len(header)]) for r in out_rows]
        assert order == sorted(order)
        for r, i in zip(out_rows, order, strict=True):
            assert i not in seen
            seen[i] = name
            assert r[: len(header)] == rows[i], (name, i)  # values unchanged, byte for byte
            cells = dict(zip(header, rows[i], strict=True))
            if name == "rejected":
                kind, _, column = r[-1].partition(":")
                assert kind in {"missing", "not_numeric", "not_finite"} and column in features
                assert not _finite_number(cells[column])
            else:
                assert all(_finite_number(cells[f]) for f in features), rows[i]
                s1 = float(r[-2])
                quadrant = int(r[-3])
                assert (quadrant in (1, 4)) == (name == "keep") and (s1 >= 0) == (name == "keep")
    assert sorted(seen) == list(range(len(rows)))
    assert result.rows["input"] == len(rows)


def _finite_number(cell: str) -> bool:
    text = cell.strip(" \t")
    return bool(NUMBER.fullmatch(text)) and math.isfinite(float(text))


def _study(result: RunResult) -> dict[str, Any]:
    import json

    return json.loads((result.run_dir / "output" / "Q_study.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- CSV strategies

hostile_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=12
) | st.sampled_from(
    ['"', '""', ",", "\n", "a\nb", '"quoted"', "\ufeff", "\x00", "\u2028", "😀", " ", "NA", "-"]
)
numeric_cells = (
    st.floats(-1e150, 1e150, allow_nan=False).map(repr)
    | st.integers(-(10**20), 10**20).map(str)
    | st.sampled_from(["", "nan", "inf", "-Infinity", "1e400", " 2.5 ", "\t7", "ERR", "0x10", "1_000", "+.5",
                       "1e200", "5.", "\u22121", "\u0661", "1,5", '"3"', "NULL", "1e-400", "-0"])
)  # fmt: skip
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), min_size=1, max_size=10
) | st.sampled_from(["a", "..", "../x", "/etc/passwd", "run=x", "\x00", "\ufeffid", "a,b", 'q"', "é"])


@st.composite
def csv_tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]], bytes]:
    """``(header, rows, file bytes)``: 2-3 numeric-looking columns, some text columns, hostile cells."""
    n_num = draw(st.integers(2, 3))
    header = draw(
        st.lists(names, min_size=n_num, max_size=n_num + 3, unique=True).filter(
            lambda h: not RESERVED & set(h)
        )
    )
    n = draw(st.integers(0, 25) | st.integers(3, 25))
    rows = []
    for _ in range(n):
        row = []
        for j in range(len(header)):
            if j < n_num:
                # mostly plain numbers so the column stays numeric; hostile cells now and then
                plain = st.floats(-1e6, 1e6, allow_nan=False).map(repr) | st.integers(-999, 999).map(str)
                row.append(draw(plain if draw(st.integers(0, 4)) else numeric_cells))
            else:
                row.append(draw(hostile_text))
        rows.append(row)
    buffer = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    csv.writer(buffer, quoting=quoting, lineterminator=terminator).writerows([header, *rows])
    data = buffer.getvalue().encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # a UTF-8 BOM, as Excel writes it
    elif data.startswith(b"\xef\xbb\xbf"):
        # an unquoted first name starting with U+FEFF *is* a BOM to any reader: it is not part of the name
        header = [header[0][1:], *header[1:]]
    return header, rows, data


def _parses_as_written(header: list[str], rows: list[list[str]]) -> bool:
    """Whether pyarrow's CSV dialect reads these cells back as written (Python's writer may differ):
    pyarrow skips empty lines, so a row of one empty cell cannot exist."""
    return all(any(c != "" for c in row) or len(row) > 1 for row in rows)


@settings(HOSTILE, max_examples=120)
@given(table=csv_tables(), chunk_rows=st.sampled_from([1, 3, 65_536]), data=st.data())
def test_hostile_csv_never_crashes_and_keeps_every_row(
    tmp_path_factory: pytest.TempPathFactory, scratch: Path, table: tuple[list[str], list[list[str]], bytes],
    chunk_rows: int, data: st.DataObject,
) -> None:  # fmt: skip
    header, rows, raw = table
    # now and then name the features: existing columns (numeric or not) or names that are not there
    features = data.draw(
        st.none() | st.none() | st.lists(st.sampled_from(header) | names, min_size=1, max_size=3)
    )
    work = tmp_path_factory.mktemp("csv")
    (work / "in").mkdir()
    src = work / "in" / "table.csv"
    src.write_bytes(raw)
    spec_features = tuple(features) if features is not None else None
    outcome = run_hostile([src], work, scratch, chunk_rows=chunk_rows, features=spec_features)
    if isinstance(outcome, RunResult):
        assert _parses_as_written(header, rows)
        check_partition_csv(outcome, header, rows)
    else:
        assert outcome.code in {
            "too_few_rows", "too_few_features", "duplicate_columns", "reserved_column", "malformed_csv",
            "values_too_large", "unknown_features", "non_numeric_features",
        }, outcome.message  # fmt: skip


# ---------------------------------------------------------------- Parquet strategies

PARQUET_TYPES: dict[str, Any] = {
    "int8": (pa.int8(), st.integers(-128, 127)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float32": (pa.float32(), st.floats(width=32)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), st.text(max_size=8)),
    "binary": (pa.binary(), st.binary(max_size=6)),
    "date": (pa.date32(), st.dates()),
    "decimal": (pa.decimal128(10, 3), st.decimals(-1000, 1000, places=3, allow_nan=False)),
    "list": (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), max_size=3)),
    "struct": (pa.struct([("x", pa.int16())]), st.fixed_dictionaries({"x": st.integers(-5, 5)})),
    "null": (pa.null(), st.none()),
}


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    kinds = draw(st.lists(st.sampled_from(sorted(PARQUET_TYPES)), min_size=1, max_size=6))
    n = draw(st.integers(0, 20) | st.integers(4, 20))
    columns = {}
    for j, kind in enumerate(kinds):
        arrow_type, values = PARQUET_TYPES[kind]
        cells = draw(st.lists(st.one_of(values, values, values, st.none()), min_size=n, max_size=n))
        columns[f"{kind}_{j}"] = pa.array(cells, arrow_type)
    # two plain float columns most of the time, so many runs get as far as the split
    if draw(st.integers(0, 3)):
        columns["x"] = pa.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n)), pa.float64())
        columns["y"] = pa.array(draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n)), pa.int32())
    return pa.table(columns)


@settings(HOSTILE, max_examples=150)
@given(table=parquet_tables(), output_format=st.sampled_from(["csv", "parquet"]))
def test_hostile_parquet_never_crashes_and_keeps_every_value(
    tmp_path_factory: pytest.TempPathFactory, scratch: Path, table: pa.Table, output_format: str
) -> None:
    work = tmp_path_factory.mktemp("pq")
    (work / "in").mkdir()
    src = work / "in" / "table.parquet"
    pq.write_table(table, src)
    outcome = run_hostile([src], work, scratch, output_format=output_format, chunk_rows=7)
    if isinstance(outcome, Q4Error):
        assert outcome.code in {
            "too_few_rows",
            "too_few_features",
            "unsupported_column_type",
            "values_too_large",
        }
        return
    output = outcome.run_dir / "output"
    seen = []
    for name in ("keep", "discard", "rejected"):
        if output_format == "parquet":
            part = pq.read_table(output / f"Q_{name}.parquet")
            index = part["q4_row"].to_pylist()
            expected = table.take(pa.array(index, pa.int64()))
            assert part.select(table.column_names).schema == expected.schema  # types kept
            assert _cells(part.select(table.column_names)) == _cells(expected)  # values unchanged
        else:
            _, out_rows = read_csv_rows(output / f"Q_{name}.csv")
            index = [int(r[table.num_columns]) for r in out_rows]
        assert index == sorted(index)
        seen += index
    assert sorted(seen) == list(range(table.num_rows))


def _cells(table: pa.Table) -> list[list[Any]]:
    """Python values, with NaN made comparable (NaN != NaN)."""
    return [
        ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in col.to_pylist()]
        for col in table.columns
    ]


# ---------------------------------------------------------------- broken files


@st.composite
def broken_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """Random bytes, a good file cut short, or a good file with bytes flipped; named .csv or .parquet."""
    good_pq = io.BytesIO()
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0, 4.0], "b": [4, 1, 3, 2], "t": list("wxyz")}), good_pq)
    good = {
        "parquet": good_pq.getvalue(),
        "csv": b'a,b,t\n1.0,4,w\n2.0,1,x\n3.0,3,"y"\n4.0,2,z\n',
    }
    suffix = draw(st.sampled_from(["csv", "parquet"]))
    base = good[draw(st.sampled_from(["csv", "parquet"]))]
    how = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if how == "random":
        data = draw(st.binary(max_size=300))
    elif how == "truncated":
        data = base[: draw(st.integers(0, len(base) - 1))]
    else:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    return suffix, data


@settings(HOSTILE, max_examples=200)
@given(broken=broken_files())
def test_broken_files_fail_with_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, scratch: Path, broken: tuple[str, bytes]
) -> None:
    suffix, data = broken
    work = tmp_path_factory.mktemp("broken")
    (work / "in").mkdir()
    src = work / "in" / f"file.{suffix}"
    src.write_bytes(data)
    run_hostile([src], work, scratch)


@pytest.mark.parametrize("chunk_rows", [7, 65_536])
def test_quoted_newlines_across_read_blocks_round_trip(tmp_path, scratch, chunk_rows):
    """RFC 4180 values spanning lines, in a file of several read blocks (1 MiB at most each): before
    ``newlines_in_values`` the reader lost sync at the first block boundary inside such a value."""
    rows = [
        [f"r{i}", str((i * 7) % 13), str((i * 3) % 11), "x" * (i % 300) + "\n" + "y" * (i % 37) + '\r\nz,"q"']
        for i in range(6000)
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["id", "a", "b", "text"], *rows])
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "multiline.csv"
    src.write_text(buffer.getvalue(), encoding="utf-8")
    assert src.stat().st_size > 1 << 20  # more than one block even at the largest block size
    outcome = run_hostile([src], tmp_path, scratch, chunk_rows=chunk_rows)
    assert isinstance(outcome, RunResult), outcome
    check_partition_csv(outcome, ["id", "a", "b", "text"], rows)


@pytest.mark.parametrize("chunk_rows", [1, 64, 65_536])
def test_a_long_row_after_short_ones_reads_the_same_at_any_chunk_size(tmp_path, scratch, chunk_rows):
    """Results must not depend on how the data is read: a 300 KB text cell after 3,000 short rows (the
    read block was sized from the first 64 KiB and the chunk size: 64 KiB at ``--chunk-rows 1``)."""
    rows = [[str(i), str((i * 7) % 13), "t"] for i in range(3000)] + [["3000", "5", "z" * 300_000]]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([["a", "b", "text"], *rows])
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "long.csv"
    src.write_text(buffer.getvalue())
    outcome = run_hostile([src], tmp_path, scratch, chunk_rows=chunk_rows)
    assert isinstance(outcome, RunResult), outcome
    check_partition_csv(outcome, ["a", "b", "text"], rows)


# ---------------------------------------------------------------- unclosed quotes


def ends_inside_quote(data: bytes) -> bool:
    """Oracle, Python's own CSV reader: does the file end inside a quoted value? Then a marker line
    appended to it lands in that value instead of being a row of its own."""
    csv.field_size_limit(1 << 30)  # set here too: the test must not depend on another having set it
    text = data.decode("utf-8").removeprefix("\ufeff")
    rows = list(csv.reader(io.StringIO(text + "\nMARK", newline="")))
    return rows[-1] != ["MARK"]


def swallowed_from(data: bytes) -> int:
    """Where the unclosed value opens: Python's reader returns it as the last value of the file, and it
    is the rest of the file after its quote, quotes doubled."""
    last = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))[-1][-1]
    return len(data) - len(('"' + last.replace('"', '""')).encode("utf-8"))


def read_table(path: Path, chunk_rows: int = 7) -> int | Q4Error:
    """Rows read by the real reader (open_inputs + iter_batches), or the error it raises."""
    try:
        table = open_inputs([path])
        return sum(batch.num_rows for _, batch in iter_batches(table, chunk_rows))
    except Q4Error as exc:
        assert exc.message.endswith(".") and "\n" not in exc.message, exc.message
        return exc


def line_of(data: bytes, offset: int) -> int:
    return len((data[:offset].decode("utf-8") + "x").splitlines())


BIG = b"3,1,y\n" * 200_000  # 1.2 MB: more than one read block (1 MiB)


@pytest.mark.parametrize(
    "data",
    [
        b'a,b,t\n1,2,"never closed\n3,1,y\n',  # last column: pyarrow swallows the rest silently
        b'a,b,t\n1,"never closed\n3,1,y\n',  # middle column: pyarrow counts too few fields
        b'a,b,t\r\n1,2,x\r\n3,1,"a\r\nb""c\r\n',  # CRLF, a doubled quote inside the open value
        b'a,b,t\n1,2,x\n3,1,"',  # the very last byte opens it
        b'a,b,t\n1,2,x\n3,1,"y""',  # ends on an escaped quote: still open
        b'a,b,"t\n1,2,3\n4,5,6\n',  # in the header: no data rows left
        b'"a,b,t\n1,2,3\n4,5,6\n',  # the first byte
        b'\xef\xbb\xbf"a,b,t\n1,2,3\n',  # right after a UTF-8 BOM
        b'a,b,t\n1,2,5"\n3,4,"q"\n5,6,"open\n7,8,z\n',  # after a plain quote (5") and a closed value
        b"a,b,t\n1,2,x\n" + BIG + b'4,4,"unclosed\n' + b"3,1,y\n" * 10,  # far into the file
        b'a,b,t\n1,2,x\n4,4,"unclosed\n' + BIG,  # more than a read block before the end
        b'a,b,t\n1,2,x\n4,4,"unclosed\n' + b"\xe2\x82\xac\n" * 10,  # UTF-8 text in it
    ],
)
def test_a_file_ending_inside_a_quote_names_the_line_of_the_quote(tmp_path, scratch, data):
    assert ends_inside_quote(data)
    offset = swallowed_from(data.removeprefix(b"\xef\xbb\xbf")) + (3 if data.startswith(b"\xef") else 0)
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "quote.csv"
    src.write_bytes(data)
    outcome = run_hostile([src], tmp_path, scratch, chunk_rows=7 if len(data) < 1000 else 65_536)
    assert isinstance(outcome, Q4Error), outcome
    line = line_of(data, offset)
    assert outcome.code == "malformed_csv"
    assert outcome.details == {
        "input": str(src), "problem": "unclosed_quote", "line": line, "byte_offset": offset
    }  # fmt: skip
    assert f"ends inside a quoted value: the quote that opens it on line {line:,} " in outcome.message
    assert 'close it, or double it ("")' in outcome.message


@pytest.mark.parametrize(
    "data",
    [
        b'a,b,t\n1,2,x\n3,1,"\n"\n',  # the last value is one line break, quoted: looks like an open quote
        b'a,b,t\n1,2,x\n3,1,"\n"',
        b'a,b,t\n1,2,x\n3,1,""""\n',  # the last value is one quote
        b'a,b,t\n1,2,x\n3,1,5"\n',  # a plain quote (inches) ends the file
        b'a,b,t\n1,2,x\n3,1,"a""\nb"\n',
        b'a,b,t\n1,2,"many\n\n\nlines\n' + b"\n" * 5000 + b'end"\n3,1,y\n',  # legitimately multi-line
        b'a,b,t\n1,2,x\n3,1,"ab"c"d\n',  # pyarrow: ab"c"d (closed, then plain text)
    ],
)
def test_quoted_values_that_are_closed_keep_working(tmp_path, data):
    assert not ends_inside_quote(data)
    src = tmp_path / "closed.csv"
    src.write_bytes(data)
    assert unclosed_quote(src) is None
    assert read_table(src) == len(list(csv.reader(io.StringIO(data.decode(), newline="")))) - 1


csv_tokens = st.sampled_from(["a", "1", "2.5", ",", '"', '""', "\n", "\r\n", "\r", " ", "5'1\""])


@settings(HOSTILE, max_examples=300)
@given(body=st.lists(csv_tokens, max_size=40).map("".join), bom=st.booleans())
def test_reader_fails_on_an_unclosed_quote_exactly_when_python_csv_does(tmp_path_factory, body, bom):
    """Any mix of separators, quotes, doubled quotes, plain quotes and line breaks: the reader's verdict
    (and the quote it names) agrees with Python's csv module."""
    data = (b"\xef\xbb\xbf" if bom else b"") + b"x,y,t\n" + body.encode()
    src = tmp_path_factory.mktemp("q") / "t.csv"
    src.write_bytes(data)
    outcome = read_table(src)
    inside = ends_inside_quote(data)
    _event(f"inside={inside}: {outcome.code if isinstance(outcome, Q4Error) else 'read'}")
    unclosed = isinstance(outcome, Q4Error) and outcome.details.get("problem") == "unclosed_quote"
    assert unclosed == inside, outcome
    if unclosed:
        assert isinstance(outcome, Q4Error)
        offset = (3 if bom else 0) + swallowed_from(data.removeprefix(b"\xef\xbb\xbf"))
        assert outcome.details["byte_offset"] == offset and outcome.details["line"] == line_of(data, offset)


@st.composite
def cut_tables(draw: st.DrawFn) -> bytes:
    """A hostile table cut anywhere (often inside a multi-line quoted value), or a random token soup."""
    if draw(st.booleans()):
        return b"x,y\n" + draw(st.lists(csv_tokens, max_size=60).map("".join)).encode()
    _, _, raw = draw(csv_tables())
    return raw[: draw(st.integers(0, len(raw)))]


@pytest.mark.parametrize("scan_bytes", [1, 2, 3, 4])
@pytest.mark.parametrize(
    ("data", "opened"), [(b'\xef\xbb\xbf"', 3), (b'\xef\xbb\xbfa,"b', 5), (b'\xef\xbb\xbf""', None)]
)
def test_a_bom_split_across_reads_still_starts_a_field(tmp_path, data, opened, scan_bytes, monkeypatch):
    """Found by the property below (BOM + a quote, read one byte at a time): the BOM must be seen whole."""
    src = tmp_path / "t.csv"
    src.write_bytes(data)
    monkeypatch.setattr(tables, "SCAN_BYTES", scan_bytes)
    assert unclosed_quote(src) == opened
    assert (opened is not None) == ends_inside_quote(data)


@settings(HOSTILE, max_examples=200)
@given(data=cut_tables(), scan_bytes=st.sampled_from([1, 2, 3, 7, 1 << 22]))
def test_the_quote_scanner_agrees_with_python_csv_at_any_read_size(tmp_path_factory, data, scan_bytes):
    """Scanned in reads as small as one byte, the state carried from read to read (the byte before, a
    closing quote at the edge, the BOM) gives Python's answer, and the same quote."""
    try:
        if "\x00" in data.decode("utf-8"):  # Python's reader refuses NUL
            return
    except UnicodeDecodeError:  # cut inside a character
        return
    src = tmp_path_factory.mktemp("cut") / "t.csv"
    src.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tables, "SCAN_BYTES", scan_bytes)
        found = unclosed_quote(src)
    assert (found is not None) == ends_inside_quote(data)
    if found is not None:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        assert found == bom + swallowed_from(data[bom:])
