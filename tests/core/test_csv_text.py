"""CSV outputs: RFC 4180 minimal quoting, the same bytes whatever the chunking, values exactly as read.

Only a value holding ``,``, ``"``, CR or LF is quoted (its quotes doubled); every other value is written
as pyarrow writes it unquoted. pyarrow's own "needed" style quotes every text value of a chunk, so one
odd value used to change how a whole chunk looked (and chunks differed from each other).
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from q4 import JobSpec, run_job
from q4.outputs import SPLIT_ROWS, TableWriter, _format_quoted

SPECIAL = ',"\r\n'


def python_rows(data: bytes) -> list[list[str]]:
    csv.field_size_limit(1 << 30)
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def pyarrow_rows(data: bytes) -> list[list[str]]:
    """Read back as q4 reads CSV: every column as text, quoted values may span lines."""
    names = header_names(data)
    table = pcsv.read_csv(
        io.BytesIO(data),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return [list(r.values()) for r in table.to_pylist()]


def header_names(data: bytes) -> list[str]:
    """The header as pyarrow reads it (like q4's reader)."""
    reader = pcsv.open_csv(io.BytesIO(data), parse_options=pcsv.ParseOptions(newlines_in_values=True))
    return list(reader.schema.names)


def float_text(values: list[float]) -> list[str]:
    """Floats as pyarrow writes them (shortest round-trip form: 0 not 0.0, 1e+300)."""
    return pc.cast(pa.array(values, pa.float64()), pa.string()).to_pylist()


def minimal(value: str) -> str:
    """The expected text of one value (independent of the writer)."""
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in SPECIAL) else value


def write(path: Path, batch: pa.RecordBatch, chunks: list[int]) -> bytes:
    writer = TableWriter(path, batch.schema, "csv")
    start = 0
    for size in chunks:
        writer.write(list(batch.slice(start, size).columns))
        start += size
    writer.write(list(batch.slice(start).columns))
    writer.close()
    return path.read_bytes()


def chunked(n: int, size: int) -> list[int]:
    return [size] * (n // size)


# ---------------------------------------------------------------- the writer


def test_only_values_that_need_quotes_get_them_in_every_chunk(tmp_path):
    names = ["id", "note", "x"]
    notes = ["plain", "a,b", 'say "hi"', "two\nlines", "cr\rhere", "crlf\r\nend", " spaced ", "", "é😀"]
    n = 3 * SPLIT_ROWS + 5  # whole chunks long enough to be formatted in two halves as well
    batch = pa.record_batch(
        [
            pa.array([f"r{i}" for i in range(n)]),
            pa.array([notes[i % len(notes)] if i % 5 == 0 else "ok" for i in range(n)]),
            pa.array([i / 7 for i in range(n)]),
        ],
        names=names,
    )
    one = write(tmp_path / "one.csv", batch, [])
    xs = float_text(batch["x"].to_pylist())
    expected = "id,note,x\n" + "".join(
        f"r{i},{minimal(batch['note'][i].as_py())},{xs[i]}\n" for i in range(n)
    )
    assert one == expected.encode("utf-8")
    # the same bytes whatever the chunking: rows one by one, 7 at a time, one chunk needing no quotes
    for chunks in ([1] * 40 + chunked(n - 40, 7), chunked(n, 7), [5, 1, SPLIT_ROWS + 3]):
        assert write(tmp_path / "c.csv", batch, chunks) == one
    values = [[f"r{i}", batch["note"][i].as_py(), xs[i]] for i in range(n)]
    assert python_rows(one) == [names, *values]
    assert pyarrow_rows(one) == values


def test_header_names_are_quoted_only_when_needed_and_read_back_the_same(tmp_path):
    names = ["\ufeffid", "a,b", 'q"', "line\nbreak", "cr\ronly", " x ", "plain"]
    batch = pa.record_batch([pa.array(["1", "2"]) for _ in names], names=names)
    data = write(tmp_path / "h.csv", batch, [])
    # a lone CR was written unquoted before (Python's csv with lineterminator="\n" does not quote it),
    # which readers take for a line end; a first name starting with U+FEFF unquoted is read as a BOM
    header = '"\ufeffid","a,b","q""","line\nbreak","cr\ronly", x ,plain\n'
    assert data.startswith(header.encode("utf-8"))
    assert python_rows(data)[0] == names
    assert header_names(data) == names
    assert pyarrow_rows(data) == [["1"] * len(names), ["2"] * len(names)]


def test_quoted_and_unquoted_formatting_give_the_same_text_for_every_type():
    """The quoting path casts every column to text itself: it must match what pyarrow's writer gives
    for the same values unquoted, or a chunk's bytes would depend on its neighbours."""
    n = 8
    columns = {
        "f64": pa.array([1.5, -0.0, math.nan, math.inf, 1e300, 5e-324, 0.1 + 0.2, None]),
        "f32": pa.array([1.5, -0.0, math.nan, -math.inf, 3.4e38, 1e-40, 0.1, None], pa.float32()),
        "i64": pa.array([1, -(2**63), 2**63 - 1, None, 0, 5, 6, 7], pa.int64()),
        "u64": pa.array([2**64 - 1, 0, None, 1, 2, 3, 4, 5], pa.uint64()),
        "i8": pa.array([1, -128, 127, None, 0, 0, 0, 0], pa.int8()),
        "bool": pa.array([True, False, None, True, True, False, True, False]),
        "date": pa.array([datetime.date(2020, 1, 1), None] * 4, pa.date32()),
        "ts": pa.array([datetime.datetime(2020, 1, 1, 1, 2, 3, 456), None] * 4, pa.timestamp("ns")),
        "tstz": pa.array([datetime.datetime(2020, 1, 1, 1, 2, 3), None] * 4, pa.timestamp("ms", tz="UTC")),
        "time": pa.array([datetime.time(1, 2, 3, 4), None] * 4, pa.time64("us")),
        "dur": pa.array([datetime.timedelta(seconds=3), None] * 4, pa.duration("us")),
        "dec": pa.array([decimal.Decimal("-1.230"), None] * 4, pa.decimal128(10, 3)),
        "null": pa.nulls(n),
        "text": pa.array(["a", None, "", " b ", "é", "\t", "x", "y"]),
        "large": pa.array(["a", None, "b", "c", "d", "e", "f", "g"], pa.large_string()),
        "dict": pa.array(["a", None, "b", "a", "c", "a", "b", "c"]).dictionary_encode(),
    }
    batch = pa.RecordBatch.from_pydict(columns)
    buffer = io.BytesIO()
    pcsv.write_csv(batch, buffer, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    assert _format_quoted(batch) == buffer.getvalue()
    assert _format_quoted(batch.slice(3, 4)) + _format_quoted(batch.slice(7)) == _format_quoted(
        batch.slice(3)
    )
    assert _format_quoted(batch.slice(0, 0)) == b""


hostile_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
) | st.sampled_from(['"', '""', ",", "\n", "\r", "\r\n", "a\nb", '"q"', " ", "", "\ufeff", "\u2028"])


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(st.tuples(hostile_text, hostile_text, st.floats(allow_nan=False)), min_size=1, max_size=30),
    sizes=st.lists(st.integers(1, 9), max_size=8),
)
def test_any_text_round_trips_through_python_csv_and_pyarrow_at_any_chunking(tmp_path, rows, sizes):
    batch = pa.record_batch(
        [pa.array([r[0] for r in rows]), pa.array([r[1] for r in rows]), pa.array([r[2] for r in rows])],
        names=["a", "b", "x"],
    )
    one = write(tmp_path / "one.csv", batch, [])
    assert write(tmp_path / "chunks.csv", batch, sizes) == one
    assert write(tmp_path / "ones.csv", batch, [1] * len(rows)) == one
    xs = float_text([x for _, _, x in rows])
    expected = "a,b,x\n" + "".join(
        f"{minimal(a)},{minimal(b)},{t}\n" for (a, b, _), t in zip(rows, xs, strict=True)
    )
    assert one == expected.encode("utf-8")
    values = [[a, b, t] for (a, b, _), t in zip(rows, xs, strict=True)]
    assert python_rows(one) == [["a", "b", "x"], *values]
    assert pyarrow_rows(one) == values
    assert [float(t) for t in xs] == [x for _, _, x in rows]  # shortest round-trip form


# ---------------------------------------------------------------- through the job


def test_run_outputs_are_minimally_quoted_and_the_same_at_chunk_sizes_1_7_and_all(tmp_path, rng):
    """A real input with a few values needing quotes: every output row's input part is the minimal-quoted
    input text, byte for byte, whatever --chunk-rows (the scores are compared elsewhere: their last
    digits may depend on the chunking)."""
    notes = ["a, b", 'he said "no"', "multi\nline", "plain", "x"]
    x = rng.standard_normal((120, 3)) @ [[1.0, 0.4, 0.1], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]]
    rows = [[f"r{i}", *(f"{v:.4f}" for v in x[i]), notes[i % 5] if i % 4 == 0 else "ok"] for i in range(120)]
    src = tmp_path / "in.csv"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(
        [["id", "a", "b", "c", "note"], *rows]
    )
    src.write_text(buffer.getvalue(), encoding="utf-8")
    parts: dict[int, dict[str, list[bytes]]] = {}
    for chunk_rows in (1, 7, 65_536):
        run_dir = tmp_path / f"c{chunk_rows}" / "run=r"
        run_job([src], run_dir, JobSpec(run_id="r", chunk_rows=chunk_rows))
        parts[chunk_rows] = {}
        for name in ("keep", "discard"):
            data = (run_dir / "output" / f"Q_{name}.csv").read_bytes()
            got = python_rows(data)
            assert got[0] == ["id", "a", "b", "c", "note", "q4_row", "q4_quadrant", "q4_score1", "q4_score2"]
            lines = []
            for r in got[1:]:
                i = int(r[5])
                assert r[:5] == rows[i]
                lines.append((",".join(minimal(v) for v in rows[i]) + f",{i},{r[6]},").encode())
            # each row's bytes up to the scores are exactly the minimal-quoted input values
            text = data.split(b"\n", 1)[1]
            for line in lines:
                assert line in text
                text = text[text.index(line) + len(line) :]
            parts[chunk_rows][name] = lines
    assert parts[1] == parts[7] == parts[65_536]
    assert sum(len(v) for v in parts[1].values()) == 120
