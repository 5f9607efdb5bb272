"""`q4 run`: results where promised, bad input as one sentence + exit 2 + ERROR.json, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from q4 import Q4Estimator
from q4.cli import main
from q4.cli.run import default_run_id
from support.tables import matrix_csv, read_json, write_csv

Q4 = str(Path(sys.executable).with_name("q4"))


def _good_csv(tmp_path: Path, name: str = "good.csv") -> Path:
    rng = np.random.default_rng(5)
    return matrix_csv(tmp_path / name, rng.standard_normal((60, 3)) @ rng.standard_normal((3, 3)))


def test_run_commits_with_a_manifest_listing_every_artifact(tmp_path, capsys):
    src = _good_csv(tmp_path)
    assert (
        main(["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "r1", "--mode", "enhanced"]) == 0
    )
    run_dir = tmp_path / "out" / "run=r1"
    manifest = read_json(run_dir / "MANIFEST.json")
    assert manifest["schema"] == "q4.manifest/v1" and manifest["status"] == "succeeded"
    listed = {a["key"] for a in manifest["artifacts"]}
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} - {
        "MANIFEST.json"
    }
    assert listed == on_disk
    assert "model/q4_model.json" in listed and "output/svd_scores.csv" in listed
    assert manifest["rows"]["input"] == 60 and manifest["inputs"][0]["key"] == str(src)
    assert manifest["timings"]["total"] > 0
    out = capsys.readouterr().out
    assert "run r1 succeeded: 60 rows" in out and str(run_dir) in out


def test_default_run_id_is_valid_and_named_after_the_input():
    from datetime import UTC, datetime

    when = datetime(2025, 8, 25, 1, 2, 3, 45_678, tzinfo=UTC)
    run_id = default_run_id(Path("/data/My Data (v2).final.csv"), when)
    assert run_id == "20250825-010203.045-My-Data-v2"  # milliseconds: two runs in one second differ
    later = default_run_id(Path("/data/My Data (v2).final.csv"), when.replace(microsecond=46_000))
    assert later != run_id and sorted([later, run_id]) == [run_id, later]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", default_run_id(Path("x" * 200 + ".csv")))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "empty.csv").write_bytes(b"")
    (d / "header.csv").write_text("a,b,c\n")
    write_csv(d / "text.csv", ["name", "city"], [["ann", "oslo"], ["bob", "rome"]])
    write_csv(d / "one.csv", ["name", "x"], [["ann", 1.5], ["bob", 2.5], ["cy", 3.0]])
    write_csv(d / "invalid.csv", ["x", "y", "z"], [[1, "", 2], ["nan", 1, 2], [1, 2, "inf"]])
    (d / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n")
    (d / "quote.csv").write_text('a,b,c\n1,2,3\n4,"5,6\n')
    (d / "table.txt").write_text("a,b\n1,2\n3,4\n")
    (d / "latin1.csv").write_bytes("a,b,name\n1,2,Jos\u00e9\n3,4,Ren\u00e9e\n".encode("latin-1"))
    (d / "fake.parquet").write_text("not parquet at all")
    model = Q4Estimator().fit(np.random.default_rng(1).standard_normal((10, 3))).save(d / "model.json")
    good = _good_csv(d)
    return {
        "empty_input": ([str(d / "empty.csv")], "empty"),
        "header_only": ([str(d / "header.csv")], "no data rows"),
        "no_numeric": ([str(d / "text.csv")], "no numeric column"),
        "one_numeric": ([str(d / "one.csv")], "only one numeric column"),
        "all_invalid": ([str(d / "invalid.csv")], "None of the 3 rows is valid"),
        "ragged": ([str(d / "ragged.csv")], "cannot be parsed"),
        "malformed_quote": ([str(d / "quote.csv")], "never closed"),
        "unknown_type": ([str(d / "table.txt")], "neither a .csv nor a .parquet"),
        "not_utf8": ([str(d / "latin1.csv")], "not UTF-8"),
        "not_parquet": ([str(d / "fake.parquet")], "cannot be read"),
        "missing_file": ([str(d / "nope.csv")], "does not exist"),
        "model_features_absent": ([str(good), "--model", str(model)], "missing from the input"),
        "missing_model": ([str(good), "--model", str(d / "nope.json")], "does not exist"),
        "unknown_feature": ([str(good), "--features", "f0,zz"], "'zz'"),
    }


CASES = [
    "empty_input", "header_only", "no_numeric", "one_numeric", "all_invalid", "ragged",
    "malformed_quote", "unknown_type", "not_parquet", "missing_file", "model_features_absent",
    "missing_model", "unknown_feature", "not_utf8",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_exit_2_and_error_json(tmp_path, capsys, case):
    args, phrase = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    assert main(["run", *args, "--out", str(out), "--run-id", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("q4: error: ") and "\n" not in err and phrase in err
    assert "Traceback" not in err
    run_dir = out / "run=bad"
    error = read_json(run_dir / "ERROR.json")
    assert error["schema"] == "q4.error/v1" and error["message"] in err and error["retryable"] is False
    assert sorted(p.name for p in run_dir.iterdir()) == ["ERROR.json"]  # no partial run that looks complete


def _snapshot(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_a_committed_run_with_the_same_job_is_a_success_and_left_untouched(tmp_path, capsys):
    src = _good_csv(tmp_path)
    args = ["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "done"]
    assert main(args) == 0
    run_dir = tmp_path / "out" / "run=done"
    before = _snapshot(tmp_path / "out")
    capsys.readouterr()
    # the same job, and the same bytes reached by another path: exit 0 (as the task), nothing rewritten
    copy = tmp_path / "elsewhere" / "copy.csv"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    for again in (args, ["run", str(copy), *args[2:]]):
        assert main(again) == 0
        out = capsys.readouterr().out
        assert "run done is already committed with the same job; nothing was rewritten" in out
        assert f"results in {run_dir}/" in out
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (["--mode", "enhanced"], "mode standard there, enhanced here"),
        (["--features", "f0,f1"], "features default there, 'f0', 'f1' here"),
        (["--output-format", "parquet"], "output_format csv there, parquet here"),
        (["OTHER_BYTES"], "other bytes in the input"),
        (["SECOND_INPUT"], "1 input file(s) there, 2 here"),
    ],
)
def test_a_committed_run_with_another_job_is_refused_and_left_untouched(tmp_path, capsys, change, phrase):
    src = _good_csv(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "--run-id", "done"]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    args = ["run", str(src), "--out", str(out), "--run-id", "done"]
    if change == ["OTHER_BYTES"]:  # same path and size, one byte changed
        data = bytearray(src.read_bytes())
        data[-2] = ord("7") if data[-2] != ord("7") else ord("8")
        src.write_bytes(bytes(data))
    elif change == ["SECOND_INPUT"]:
        args.insert(2, str(_good_csv(tmp_path, "second.csv")))
    else:
        args += change
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("q4: error: Run done in ")
    assert f"is already committed with another job ({phrase}" in err and "choose another --run-id" in err
    assert _snapshot(out) == before


def test_a_failed_run_is_final_same_error_again_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    header = tmp_path / "header.csv"
    header.write_text("a,b,c\n")
    args = ["run", str(header), "--out", str(out), "--run-id", "bad"]
    assert main(args) == 2
    first = capsys.readouterr().err
    error = read_json(out / "run=bad" / "ERROR.json")
    assert error["inputs"] == [{"key": str(header), "size": 6}] and error["code"] == "too_few_rows"
    before = _snapshot(out)
    # the same job again: the recorded failure, printed, exit 2 (as the task: a failed run is final)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Run bad already failed with this job" in err
    assert error["message"] in err and error["message"] in first and "another --run-id" in err
    # another job under the failed run id (other parameters, other input bytes): exit 2, pick another id
    assert main([*args, "--mode", "full"]) == 2
    err = capsys.readouterr().err
    assert "Run bad in " in err and "already failed with another job (mode standard there, full here)" in err
    header.write_text("a,b,c\n1,2,3\n4,5,6\n")
    assert main(args) == 2
    assert "already failed with another job (other bytes in the input" in capsys.readouterr().err
    assert _snapshot(out) == before and not (out / "run=bad" / "MANIFEST.json").exists()


def test_an_unreadable_manifest_is_refused_not_a_traceback(tmp_path, capsys):
    src = _good_csv(tmp_path)
    run_dir = tmp_path / "out" / "run=junk"
    run_dir.mkdir(parents=True)
    (run_dir / "MANIFEST.json").write_text("{not json")
    assert main(["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "junk"]) == 2
    err = capsys.readouterr().err
    assert "holds a MANIFEST.json that q4 cannot read as this run's; choose another --run-id" in err
    assert (run_dir / "MANIFEST.json").read_text() == "{not json"


def test_partial_leftovers_are_cleared_and_the_run_proceeds(tmp_path):
    src = _good_csv(tmp_path)
    run_dir = tmp_path / "out" / "run=again"
    (run_dir / "output").mkdir(parents=True)
    (run_dir / "output" / "Q_keep.csv").write_text("half a file")
    (run_dir / "stray.tmp").write_text("x")
    assert main(["run", str(src), "--out", str(tmp_path / "out"), "--run-id", "again"]) == 0
    assert not (run_dir / "stray.tmp").exists()
    assert (run_dir / "output" / "Q_keep.csv").read_text().startswith("f0,f1,f2,q4_row")


def test_real_command_line_exit_codes_and_no_traceback(tmp_path):
    src = _good_csv(tmp_path)
    env = {**os.environ, "Q4_SCRATCH_DIR": str(tmp_path / "scratch")}
    (tmp_path / "scratch").mkdir()
    ok = subprocess.run([Q4, "run", str(src), "--out", str(tmp_path / "o"), "--run-id", "cli"],
                        capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "results in" in ok.stdout
    bad = subprocess.run([Q4, "run", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1
    assert list((tmp_path / "scratch").iterdir()) == []  # spill files are cleaned up
    errors = list((tmp_path / "o").glob("run=*/ERROR.json"))
    assert len(errors) == 1 and json.loads(errors[0].read_text())["code"] == "input_not_found"
