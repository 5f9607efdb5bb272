"""Hostile files through the real ``q4 run`` command line (a subprocess): exit 0 or 2, one sentence on
stderr and never a traceback, every file written under ``DIR/run=<id>/``, the scratch dir left empty."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from q4.errors import InputError
from q4.job import MAX_FEATURES, JobSpec, run_job

Q4 = str(Path(sys.executable).with_name("q4"))


def q4_run(tmp_path: Path, *args: str, run_id: str = "h") -> subprocess.CompletedProcess[str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "Q4_SCRATCH_DIR": str(scratch)}
    proc = subprocess.run(
        [Q4, "run", *args, "--out", str(tmp_path / "out"), "--run-id", run_id],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:
        assert proc.stderr.startswith("q4: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert re.fullmatch(r"q4: error: .+\. \[[a-z0-9_]+\]", proc.stderr.rstrip()), proc.stderr
    out = tmp_path / "out"
    written = [p.relative_to(out) for p in out.rglob("*")] if out.exists() else []
    assert all(p.parts[0] == f"run={run_id}" for p in written), written
    assert list(scratch.iterdir()) == []
    return proc


def error_code(tmp_path: Path, run_id: str = "h") -> str:
    return str(json.loads((tmp_path / "out" / f"run={run_id}" / "ERROR.json").read_text())["code"])


def _fake_parquet_with_a_multiline_error() -> bytes:
    return b"PAR1" + b"\x00" * 20 + b"PAR1"  # pyarrow: "Couldn't deserialize thrift: ...\n"


@pytest.mark.parametrize(
    ("name", "data", "code", "phrase"),
    [
        ("empty.csv", b"", "empty_input", "is empty"),
        ("empty.parquet", b"", "empty_input", "is empty"),
        ("notparquet.parquet", b"a,b\n1,2\n3,4\n", "malformed_parquet", "cannot be read"),
        ("thrift.parquet", _fake_parquet_with_a_multiline_error(), "malformed_parquet", "cannot be read"),
        ("utf16.csv", "a,b,c\n1,2,3\n4,5,7\n".encode("utf-16"), "malformed_csv", "not UTF-8"),
        ("nul.csv", b"\x00" * 64, "malformed_csv", "cannot be parsed"),
        (
            "longrow.csv",
            b"a,b,t\n1,2,x\n3,1,y\n2,2," + b"z" * (2 << 20) + b"\n",
            "malformed_csv",
            "longer than",
        ),
        # other separators (Excel in many locales writes ';' and decimal commas) are named, not "no numeric
        # column"
        (
            "semicolon.csv",
            b"sample;site;temp;hum\ns0;south;20,5;33,1\ns1;north;21,5;30,2\n",
            "malformed_csv",
            "separated by ';'",
        ),
        ("semicolon-dot.csv", b"a;b;c\n1;2;3\n4;5;6\n7;8;10\n", "malformed_csv", "separated by ';'"),
        ("tabs.csv", b"a\tb\tc\n1\t2\t3\n4\t5\t6\n7\t8\t10\n", "malformed_csv", "separated by tabs"),
        # a quote never closed: pyarrow would swallow the rest of the file into one cell
        ("quote.csv", b'a,b,t\n1,2,"never closed\n3,1,y\n', "malformed_csv", "is never closed"),
    ],
)
def test_hostile_files_exit_2_with_one_sentence(tmp_path, name, data, code, phrase):
    src = tmp_path / name
    src.write_bytes(data)
    proc = q4_run(tmp_path, str(src))
    assert proc.returncode == 2 and phrase in proc.stderr, proc.stderr
    assert error_code(tmp_path) == code


def test_bom_quotes_embedded_newlines_and_unicode_names_round_trip(tmp_path):
    text = 'id,"x ""x""","y\nnewline",note\n' + "".join(
        f'r{i},{i * 1.5},{(i * 7) % 5},"line1\nline2, ""q"" {i} \u00e9\U0001f600"\n' for i in range(12)
    )
    src = tmp_path / "bom.csv"
    src.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert q4_run(tmp_path, str(src)).returncode == 0
    import csv

    rows = []
    for part in ("keep", "discard"):
        with (tmp_path / "out" / "run=h" / "output" / f"Q_{part}.csv").open(
            newline="", encoding="utf-8"
        ) as f:
            got = list(csv.reader(f))
        assert got[0][:4] == ["id", 'x "x"', "y\nnewline", "note"]  # the BOM is not part of the first name
        rows += got[1:]
    assert sorted(r[0] for r in rows) == sorted(f"r{i}" for i in range(12))
    assert all(r[3] == f'line1\nline2, "q" {r[0][1:]} \u00e9\U0001f600' for r in rows)


def test_nested_parquet_columns_need_parquet_output(tmp_path):
    src = tmp_path / "nested.parquet"
    tags = [["x"], [], ["y", "z"]]
    pq.write_table(
        pa.table({"a": [1.0, 2.0, 3.0], "b": [3, 1, 2], "tags": tags, "raw": [b"\xff", b"", b"a"]}), src
    )
    proc = q4_run(tmp_path, str(src))
    assert proc.returncode == 2 and "--output-format parquet" in proc.stderr
    assert error_code(tmp_path) == "unsupported_column_type"
    again = tmp_path / "again"
    again.mkdir()
    assert q4_run(again, str(src), "--output-format", "parquet").returncode == 0
    keep = pq.read_table(again / "out" / "run=h" / "output" / "Q_keep.parquet")
    assert keep.schema.field("tags").type == pa.list_(pa.string())


@pytest.mark.parametrize("run_id", ["../evil", "r\n", "/abs", "a..b", "x" * 65, "run=x/../y"])
def test_hostile_run_ids_write_nothing(tmp_path, run_id):
    src = tmp_path / "ok.csv"
    src.write_text("a,b\n1,2\n2,1\n3,5\n")
    proc = q4_run(tmp_path, str(src), run_id=run_id)
    assert proc.returncode == 2 and "run id" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_run_id_with_a_trailing_newline_is_refused_by_the_library():
    with pytest.raises(InputError) as caught:
        JobSpec(run_id="r\n").validate()
    assert caught.value.code == "invalid_run_id"


def test_relative_and_absolute_input_paths_with_dotdot(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "data.csv").write_text("a,b\n1,2\n2,1\n3,5\n4,4\n")
    via_dotdot = str(deep / ".." / ".." / "data.csv")
    assert q4_run(tmp_path, via_dotdot).returncode == 0
    manifest = json.loads((tmp_path / "out" / "run=h" / "MANIFEST.json").read_text())
    assert manifest["inputs"][0]["key"] == via_dotdot and manifest["rows"]["input"] == 4


def _wide_csv(path: Path, n_numeric: int, n_text: int, rows: int = 6) -> Path:
    rng = np.random.default_rng(1)
    header = [f"f{j}" for j in range(n_numeric)] + [f"t{j}" for j in range(n_text)]
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    values = rng.integers(0, 1000, (rows, n_numeric))
    for i in range(rows):
        buffer.write(
            ",".join(map(str, values[i])) + ("," if n_text else "") + ",".join(["txt"] * n_text) + "\n"
        )
    path.write_text(buffer.getvalue())
    return path


def test_ten_thousand_numeric_columns_are_refused_at_once(tmp_path):
    """10,000 features took 5 minutes and 4.8 GB; the job refuses more than MAX_FEATURES up front."""
    src = _wide_csv(tmp_path / "wide.csv", 10_000, 0)
    started = time.perf_counter()
    proc = q4_run(tmp_path, str(src))
    assert time.perf_counter() - started < 30
    assert proc.returncode == 2 and "10,000 feature columns" in proc.stderr and "5,000" in proc.stderr
    assert error_code(tmp_path) == "too_many_features"
    # naming fewer features makes the same table work
    features = ",".join(f"f{j}" for j in range(0, 10_000, 500))
    again = tmp_path / "again"
    again.mkdir()
    assert q4_run(again, str(src), "--features", features).returncode == 0


def test_ten_thousand_passthrough_columns_work(tmp_path):
    src = _wide_csv(tmp_path / "wide.csv", 3, 10_000)
    started = time.perf_counter()
    assert q4_run(tmp_path, str(src)).returncode == 0
    assert time.perf_counter() - started < 60
    with (tmp_path / "out" / "run=h" / "output" / "Q_keep.csv").open() as f:
        header = f.readline().rstrip("\n").split(",")
    assert len(header) == 10_003 + 4


def test_full_mode_width_limit_is_lower(tmp_path):
    x = np.random.default_rng(2).standard_normal((3, MAX_FEATURES["full"] + 1))
    src = tmp_path / "w.parquet"
    pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(x.shape[1])}), src)
    with pytest.raises(InputError) as caught:
        run_job([src], tmp_path / "out" / "run=w", JobSpec(run_id="w", mode="full"))
    assert caught.value.code == "too_many_features"


def test_errors_naming_columns_stay_one_bounded_line(tmp_path):
    """An unknown feature in a 10,000-column table with long, multi-line names: the message (which lands
    in ERROR.json and the failed done message, 256 KiB at most on SQS) names a few columns, on one line."""
    names = [f"column number {j} with a long name\nand a second line" for j in range(10_000)]
    src = tmp_path / "named.parquet"
    pq.write_table(pa.table({n: [float(i % 3), float(i % 5), 1.0] for i, n in enumerate(names)}), src)
    proc = q4_run(tmp_path, str(src), "--features", "nope,also_nope")
    assert proc.returncode == 2 and "'nope', 'also_nope'" in proc.stderr
    assert "and 9,980 more" in proc.stderr and len(proc.stderr) < 2000
    assert error_code(tmp_path) == "unknown_features"
    constant = tmp_path / "constant.parquet"
    pq.write_table(pa.table({"v": [1.0, 2.0, 3.0], **{n: [7.0, 7.0, 7.0] for n in names[:12]}}), constant)
    with pytest.raises(InputError) as caught:
        run_job([constant], tmp_path / "o" / "run=c", JobSpec(run_id="c"))
    assert caught.value.code == "too_few_features" and "and 2 more" in caught.value.message
    assert "\n" not in caught.value.message


def test_a_file_name_with_control_characters_still_gives_one_line(tmp_path):
    src = tmp_path / "two\nlines\x1b[31m.parquet"
    src.write_bytes(b"not parquet")
    proc = q4_run(tmp_path, str(src))
    assert proc.returncode == 2 and "two\\nlines\\x1b[31m.parquet" in proc.stderr
    assert error_code(tmp_path) == "malformed_parquet"
