"""scripts/submit_run.sh stays plain aws CLI, with its own copy of the run-id rule and the modes: kept equal
to q4_contract's here, and it refuses a bad run id or mode before any aws call."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import q4_contract as contract

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "submit_run.sh"
#: A stand-in for the aws CLI (AWS_CLI) that records each call and answers like an empty bucket.
FAKE_AWS = """#!/usr/bin/env bash
echo "$*" >> "$AWS_CALLS"
case "$*" in *list-objects-v2*) echo None ;; *) echo '"etag-or-id"' ;; esac
"""


def script_text() -> str:
    return SCRIPT.read_text(encoding="utf-8")


def test_the_scripts_run_id_pattern_is_the_contracts() -> None:
    found = re.search(r"\[\[ \$run_id =~ (\S+) && \$run_id != \*\.\.\* \]\]", script_text())
    assert found, "submit_run.sh no longer checks the run id as '[[ $run_id =~ RE && $run_id != *..* ]]'"
    pattern = contract.RUN_ID_PATTERN.pattern
    assert pattern.startswith(r"\A") and pattern.endswith(r"\Z")
    assert found.group(1) == "^" + pattern[2:-2] + "$"


def test_the_scripts_modes_are_the_contracts() -> None:
    found = re.search(r"case \$mode in ([a-z|]+)\)", script_text())
    assert found and tuple(found.group(1).split("|")) == contract.MODES


def run_script(
    tmp_path: Path, *args: str, file_name: str = "table.csv"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    fake = tmp_path / "aws"
    fake.write_text(FAKE_AWS)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls"
    calls.write_text("")
    table = tmp_path / file_name
    table.write_text("a,b\n1,2\n3,4\n")
    env = {
        **os.environ,
        "AWS_CLI": str(fake),
        "AWS_CALLS": str(calls),
        "Q4_ARCHIVE_BUCKET": "archive",
        "Q4_WORK_QUEUE_URL": "http://127.0.0.1:1/queue/work",
    }
    env.pop("Q4_ARTIFACTS_BUCKET", None)
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(table), *args], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, calls.read_text().splitlines()


@pytest.mark.parametrize("run_id", ["a..b", "-x", ".x", "x" * 65, "a/b", "r\n", "a b", "ü"])
def test_a_bad_run_id_is_refused_before_any_aws_call(tmp_path: Path, run_id: str) -> None:
    assert not contract.is_valid_run_id(run_id)
    proc, calls = run_script(tmp_path, run_id)
    assert proc.returncode == 2 and "is not valid" in proc.stderr, proc.stderr
    assert calls == []


def test_a_bad_mode_is_refused_before_any_aws_call(tmp_path: Path) -> None:
    proc, calls = run_script(tmp_path, "ok-1", "turbo")
    assert proc.returncode == 2 and "unknown mode" in proc.stderr, proc.stderr
    assert calls == []


@pytest.mark.parametrize("run_id", ["a", "A.b_c-9", "x" * 64, "2025-08-25-001"])
def test_a_valid_run_id_goes_on_to_upload_and_send(tmp_path: Path, run_id: str) -> None:
    assert contract.is_valid_run_id(run_id)
    proc, calls = run_script(tmp_path, run_id, "full")
    assert proc.returncode == 0, proc.stderr
    assert any("put-object" in call and f"run={run_id}/input/table.csv" in call for call in calls)
    sent = next(call for call in calls if "send-message" in call)
    body = sent.split("--message-body ", 1)[1].split(" --output ", 1)[0]
    job = contract.parse_job(json.loads(body))  # a message the orchestrator accepts
    assert (job.run_id, job.mode, job.input_key) == (run_id, "full", f"run={run_id}/input/table.csv")


@pytest.mark.parametrize(
    "file_name",
    ["table.csv", "my  data+v2.csv", "==x==.parquet", "-.-.csv", "a" * 80 + ".csv", "a" * 43 + "-b.csv"],
)
def test_the_default_run_id_is_the_contracts(tmp_path: Path, file_name: str) -> None:
    proc, calls = run_script(tmp_path, file_name=file_name)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"^submitted run (\S+) ", proc.stdout, flags=re.MULTILINE)
    assert found, proc.stdout
    run_id = found.group(1)
    expected = contract.default_run_id(file_name, datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    stamp = len("20250102-030405.678-")
    assert re.fullmatch(r"\d{8}-\d{6}\.\d{3}-", run_id[:stamp]) and run_id[stamp:] == expected[stamp:]
    assert contract.is_valid_run_id(run_id)
    assert any(f"run={run_id}/input/{file_name}" in call for call in calls)
