"""Warnings about two silent mistakes: a CSV without a header row, a row id used as a feature.

Both are warnings (the run succeeds): numeric column names are legitimate (spectra), and a
default-chosen integer column follows docs/contract.md. They reach Q_study.json, the manifest, the
report and `q4 run`'s stderr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from q4.cli import main
from q4.features import counts_up, is_id_name, numeric_header_warning
from q4.job import JobSpec, run_job
from support.tables import read_json, write_csv


def _data(rows: int = 40, d: int = 3, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, d)) @ rng.standard_normal((d, d)) * 10 + 100


def _run(tmp_path: Path, src: Path, **spec) -> tuple[dict, list[dict]]:
    run_dir = tmp_path / "out" / "run=r"
    result = run_job([src], run_dir, JobSpec(run_id="r", **spec))
    study = read_json(run_dir / "output" / "Q_study.json")
    assert study["warnings"] == list(result.warnings)
    return study, study["warnings"]


def _codes(warnings: list[dict]) -> list[str]:
    return [w["code"] for w in warnings]


def test_headerless_csv_warns_and_still_runs(tmp_path, capsys):
    x = _data()
    src = tmp_path / "data.csv"
    src.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--run-id", "h", "--mode", "full"]) == 0
    run_dir = out / "run=h"
    study = read_json(run_dir / "output" / "Q_study.json")
    assert study["rows"]["input"] == 39  # the first row became the header: results still produced
    (warning,) = [w for w in study["warnings"] if w["code"] == "numeric_header"]
    first = repr(float(x[0, 0]))
    assert warning["message"].startswith(f"Every column name of data.csv is a number (e.g. '{first}'")
    assert "add a header line" in warning["message"]
    assert "numeric_header" in {w["code"] for w in read_json(run_dir / "MANIFEST.json")["warnings"]}
    assert "numeric_header" in (run_dir / "viz" / "report.html").read_text(encoding="utf-8")
    captured = capsys.readouterr()
    assert f"q4: warning: {warning['message']}" in captured.err.splitlines()
    assert "warning" not in captured.out  # stdout keeps its lines


def test_headerless_csv_with_a_repeated_number_says_the_header_is_missing(tmp_path, capsys):
    src = tmp_path / "data.csv"
    src.write_text("1.5,2,1.5\n3,4,5\n6,7,9\n8,1,2\n", encoding="utf-8")
    assert main(["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "h"]) == 2
    error = read_json(tmp_path / "out" / "run=h" / "ERROR.json")
    assert error["code"] == "duplicate_columns"
    assert "two columns named '1.5'" in error["message"] and "no header row" in error["message"]
    # named columns that repeat get the plain sentence
    src.write_text("a,b,a\n3,4,5\n6,7,9\n8,1,2\n", encoding="utf-8")
    assert main(["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "n"]) == 2
    message = read_json(tmp_path / "out" / "run=n" / "ERROR.json")["message"]
    assert message.endswith("give every column a unique name.") and "header" not in message
    capsys.readouterr()


def test_spectra_header_evenly_spaced_does_not_warn(tmp_path):
    names = [str(400 + 10 * j) for j in range(5)]
    _, warnings = _run(tmp_path, write_csv(tmp_path / "s.csv", names, _data(d=5).tolist()))
    assert warnings == []


@pytest.mark.parametrize(
    ("names", "warns"),
    [
        (["400", "410.5", "421", "431.5"], False),  # constant step 10.5
        (["1000", "999.5", "999"], False),  # decreasing
        (["400", "410"], True),  # two numbers are no evidence of an axis
        (["400", "415", "421"], True),  # uneven
        (["1", "1", "1"], True),  # not strictly monotonic
        ([" 3.5", "1e3", "-2"], True),  # the reader's number rule (blanks, exponents, signs)
        (["nan", "inf", "2"], True),
        (["400", "410", "x"], False),  # one name is not a number
        (["7"], False),  # one column
    ],
)
def test_numeric_header_rule(names, warns):
    assert (numeric_header_warning(names, "f.csv") is not None) is warns


def test_id_column_warns(tmp_path):
    x = _data()
    ids = np.arange(1000, 1000 + len(x)) * 7  # not consecutive: the name alone warns
    rows = [[int(i), *r] for i, r in zip(ids, x.tolist(), strict=True)]
    study, warnings = _run(tmp_path, write_csv(tmp_path / "t.csv", ["id", "a", "b", "c"], rows))
    assert study["features"] == ["id", "a", "b", "c"]
    (warning,) = warnings
    assert warning["code"] == "row_id_feature"
    assert warning["message"] == (
        "Feature 'id' looks like a row identifier (its name); if it is not a measurement, leave it out "
        'with --features (or the work message\'s "features").'
    )


def test_consecutive_integer_column_warns_across_chunks(tmp_path):
    x = _data(rows=50)
    rows = [[i + 5, *r] for i, r in enumerate(x.tolist())]
    _, warnings = _run(tmp_path, write_csv(tmp_path / "t.csv", ["k", "a", "b", "c"], rows), chunk_rows=16)
    (warning,) = warnings
    assert warning["code"] == "row_id_feature" and warning["message"].startswith(
        "Feature 'k' looks like a row identifier (its values count up by 1 from 5, row after row)"
    )


def test_named_and_counting_column_warns_once(tmp_path):
    x = _data()
    rows = [[i, *r] for i, r in enumerate(x.tolist())]
    _, warnings = _run(tmp_path, write_csv(tmp_path / "t.csv", ["Row_ID", "a", "b", "c"], rows))
    assert [w["message"].split(";")[0] for w in warnings] == [
        "Feature 'Row_ID' looks like a row identifier (its name and its values count up by 1 from 0, row "
        "after row)"
    ]


def test_explicit_features_with_id_do_not_warn(tmp_path, capsys):
    x = _data()
    rows = [[i, *r] for i, r in enumerate(x.tolist())]
    src = write_csv(tmp_path / "t.csv", ["id", "a", "b", "c"], rows)
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--run-id", "e", "--features", "id,a,b"]) == 0
    assert read_json(out / "run=e" / "output" / "Q_study.json")["warnings"] == []
    assert "warning" not in capsys.readouterr().err


def test_normal_file_does_not_warn(tmp_path):
    x = _data()
    x[:, 0] = np.round(x[:, 0])  # integer values that do not count rows
    _, warnings = _run(tmp_path, write_csv(tmp_path / "t.csv", ["temp", "valid", "width"], x.tolist()))
    assert warnings == []


@pytest.mark.parametrize(
    ("name", "is_id"),
    [
        ("id", True),
        (" ID ", True),
        ("Index", True),
        ("idx", True),
        ("row", True),
        ("rownum", True),
        ("Unnamed: 0", True),
        ("", True),
        ("patient_id", True),
        ("idle", False),
        ("width", False),
        ("rowing", False),
    ],
)
def test_id_names(name, is_id):
    assert is_id_name(name) is is_id


def test_counts_up():
    assert counts_up(np.array([3.0, 4.0, 5.0]))
    assert not counts_up(np.array([3.0, 4.0]))  # too few rows to say
    assert not counts_up(np.array([0.5, 1.5, 2.5]))
    assert not counts_up(np.array([1.0, 2.0, 4.0]))
    assert not counts_up(np.array([np.nan, 1.0, 2.0]))
