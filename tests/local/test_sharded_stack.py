"""Sharded runs on the local stack (issue #12; docs/contract.md, "Sharded runs"), as a user runs them:
`q4 submit --shards N` against the shared stack (the `stack` fixture), each shard step a local task.

The reference is the one-task answer: `q4 run` of the same file on this machine (the same code the task
runs). A sharded run must give the same rows in each output, the same output columns, er.json within
1e-12 and the same model; a shard task killed mid-pass is relaunched and the answer does not change.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from support.local_stack import load_bench
from support.stack_runs import client

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")
ROWS = 6000
OUTPUTS = ("Q_keep", "Q_discard", "Q_rejected")


def _q4(stack: dict[str, Any], *args: str, timeout: int = 420) -> subprocess.CompletedProcess[str]:
    env = {**stack["env"], **stack["aws"]}
    return subprocess.run([Q4, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _s3(stack: dict[str, Any]) -> Any:
    return client(stack["aws"], "s3")


def _get(stack: dict[str, Any], run_id: str, key: str) -> bytes:
    body = _s3(stack).get_object(Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Key=f"run={run_id}/{key}")
    return bytes(body["Body"].read())


def _table(rows: int) -> pa.Table:
    """Rejected rows (NaN, empty, inf), a passthrough text column with commas and quotes, a 1e9 offset."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((rows, 3))
    f_1 = base[:, 0]
    f_2 = 0.6 * base[:, 0] + base[:, 1]
    f_big = 1e9 + base[:, 2] + 0.3 * base[:, 1]
    f_1[::97] = np.nan
    f_2[::131] = np.inf
    note = [f'row {i}, "quoted" {i % 7}' if i % 5 == 0 else f"r{i}" for i in range(rows)]
    return pa.table({"note": note, "f_1": f_1, "f_2": f_2, "f_big": f_big, "f_3": rng.standard_normal(rows)})


def _write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=300)  # 20 row groups: slices of whole row groups
    else:
        pcsv.write_csv(table, path)
    return path


def _read(data: bytes, fmt: str) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data))
    return pcsv.read_csv(
        io.BytesIO(data), convert_options=pcsv.ConvertOptions(column_types={"note": pa.string()})
    )


def _reference(data: Path, tmp_path: Path, mode: str, fmt: str) -> Path:
    out = tmp_path / "reference"
    done = subprocess.run(
        [Q4, "run", str(data), "--out", str(out), "--run-id", "ref", "--mode", mode, "--output-format", fmt],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "run=ref"


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def _same_numbers(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _same_numbers(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert _close(a, b), f"{where}: {a} != {b}"
    else:
        assert a == b, where


def _assert_same_answer(stack: dict[str, Any], run_id: str, reference: Path, fmt: str, mode: str) -> None:
    suffix = ".parquet" if fmt == "parquet" else ".csv"
    for name in OUTPUTS:
        got = _read(_get(stack, run_id, f"output/{name}{suffix}"), fmt)
        want = _read((reference / "output" / f"{name}{suffix}").read_bytes(), fmt)
        assert got.column_names == want.column_names, name
        assert got.num_rows == want.num_rows, name
        assert got.column("q4_row").to_pylist() == want.column("q4_row").to_pylist(), name
        assert got.column("note").to_pylist() == want.column("note").to_pylist(), name
    er = json.loads(_get(stack, run_id, "output/er.json"))
    want_er = json.loads((reference / "output" / "er.json").read_text())
    for doc in (er, want_er):
        doc.pop("run_id", None)
    _same_numbers(er, want_er, "er")
    if mode != "standard":
        model = json.loads(_get(stack, run_id, "model/q4_model.json"))
        want_model = json.loads((reference / "model" / "q4_model.json").read_text())
        for key in ("features", "mean", "scale", "projectors", "eigenvalues"):
            _same_numbers(model[key], want_model[key], f"model.{key}")


@pytest.mark.parametrize(("fmt", "mode"), [("csv", "enhanced"), ("parquet", "full")])
def test_shards_1_2_and_7_give_the_one_task_answer(stack, tmp_path, fmt, mode):
    data = _write(_table(ROWS), tmp_path / f"shard-input.{fmt}")
    reference = _reference(data, tmp_path, mode, fmt)
    for shards in (1, 2, 7):
        run_id = f"shard-{fmt}-{shards}"
        submitted = _q4(
            stack, "submit", str(data), "--run-id", run_id, "--mode", mode, "--output-format", fmt,
            "--shards", str(shards), "--wait", "--timeout", "400",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        manifest = json.loads(_get(stack, run_id, "MANIFEST.json"))
        assert manifest["rows"]["input"] == ROWS
        if shards == 1:
            assert "sharding" not in manifest
        else:
            assert manifest["sharding"]["shards"] == shards and len(manifest["shards"]) == shards
            assert sum(s["rows"] for s in manifest["shards"]) == ROWS
        _assert_same_answer(stack, run_id, reference, fmt, mode)
        if shards == 7:  # q4 fetch checks the assembled outputs' parts
            fetched = _q4(stack, "fetch", run_id, "--to", str(tmp_path / "fetched"))
            assert fetched.returncode == 0, fetched.stdout + fetched.stderr


def _kill_first(stack: dict[str, Any], run_id: str, step: str, timeout: float = 120) -> str:
    """SIGKILL the process of the first running task of ``run_id``'s ``step``; its task ARN."""
    ledger = stack["state_dir"] / "ledger.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = json.loads(ledger.read_text()).values() if ledger.exists() else []
        for entry in entries:
            env = {
                v["name"]: v["value"]
                for o in entry["task"].get("overrides", {}).get("containerOverrides", [])
                for v in o.get("environment", [])
            }
            if (
                load_bench().run_id_of(entry) == run_id
                and env.get("Q4_SHARD_STEP") == step
                and entry["status"] == "running"
                and entry["pid"]
            ):
                os.killpg(entry["pid"], signal.SIGKILL)
                return str(entry["task_arn"])
        time.sleep(0.05)
    raise AssertionError(f"no running {step} task of {run_id} within {timeout} s")


def test_a_shard_killed_mid_pass_is_relaunched_and_the_answer_stands(stack, tmp_path):
    data = _write(_table(ROWS * 4), tmp_path / "killed.csv")
    reference = _reference(data, tmp_path, "standard", "csv")
    run_id = "shard-killed-1"
    submitted = _q4(stack, "submit", str(data), "--run-id", run_id, "--shards", "3")
    assert submitted.returncode == 0, submitted.stderr
    killed = _kill_first(stack, run_id, "pass2")
    deadline = time.monotonic() + 400
    while '"succeeded"' not in _q4(stack, "status", run_id, "--json").stdout:
        assert time.monotonic() < deadline, "the run did not succeed in time"
        time.sleep(1)
    manifest = json.loads(_get(stack, run_id, "MANIFEST.json"))
    relaunched = [s for s in manifest["shards"] if s["steps"]["pass2"]["attempts"] == 2]
    assert len(relaunched) == 1 and relaunched[0]["steps"]["pass2"]["task_arn"] != killed
    assert all(s["steps"]["pass1"]["attempts"] == 1 for s in manifest["shards"])
    _assert_same_answer(stack, run_id, reference, "csv", "standard")


def test_bad_input_in_one_shard_fails_the_run_once_naming_the_shard(stack, tmp_path):
    rows = [["a", "b", "c"]] + [[str(i), str(i * 2 % 7), str(i % 5)] for i in range(3000)]
    rows[2500].append("9")  # a row with one value too many, in the last of 3 slices: malformed_csv
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    run_id = "shard-bad-1"
    submitted = _q4(
        stack, "submit", str(path), "--run-id", run_id, "--shards", "3", "--wait", "--timeout", "300"
    )
    assert submitted.returncode != 0
    error = json.loads(_get(stack, run_id, "ERROR.json"))
    assert error["details"].get("shard") is not None and error["details"].get("shard_step") in (
        "pass1",
        "pass2",
    )
    status = json.loads(_q4(stack, "status", run_id, "--json").stdout)
    assert status["state"] == "failed"
