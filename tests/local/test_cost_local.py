"""Cost per run and the run's phase on the local stack (the `stack` fixture: `q4 local up --detach` once per
session), as a user sees them: MANIFEST.json's `cost`, the done message's `cost_usd`, `q4 status`, `q4 runs`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.local_stack import load_bench
from support.stack_runs import client

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")


def _q4(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack["env"], **stack["aws"]}
    return subprocess.run([Q4, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def _s3(stack: dict[str, Any]) -> Any:
    return client(stack["aws"], "s3")


def _manifest(stack: dict[str, Any], run_id: str) -> dict[str, Any]:
    body = _s3(stack).get_object(
        Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Key=f"run={run_id}/MANIFEST.json"
    )
    doc: dict[str, Any] = json.loads(body["Body"].read())
    return doc


def _table(path: Path, rows: int) -> Path:
    lines = ["id,f_1,f_2,f_3"] + [
        f"r{i},{(i * 7) % 13 - 6},{(i * 5) % 11 - 5}.5,{i % 3}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected_usd(cost: dict[str, Any]) -> float:
    prices = cost["prices"]
    return (
        cost["vcpu_seconds"] * prices["vcpu_hour"]
        + cost["gb_seconds"] * prices["gb_hour"]
        + cost["ephemeral_gb_seconds"] * prices["ephemeral_gb_hour"]
    ) / 3600


def test_a_local_run_shows_its_cost_in_the_manifest_status_and_runs(stack, tmp_path):
    data = _table(tmp_path / "cost.csv", 300)
    submitted = _q4(stack, "submit", str(data), "--run-id", "cost-local-1", "--wait", "--timeout", "240")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "q4: cost: $" in submitted.stdout
    # MANIFEST.json: the task's size from the deployed task definition, priced as us-east-1 (Q4_PRICE_REGION)
    cost = _manifest(stack, "cost-local-1")["cost"]
    (attempt,) = cost["attempts"]
    assert (attempt["source"], attempt["billed_s"], attempt["vcpu"]) == ("task_clock", 60, 1.0)
    assert (cost["prices"]["region"], cost["prices"]["run_region"]) == (
        "us-east-1",
        stack["aws"]["AWS_REGION"],
    )
    assert attempt["ephemeral_gib"] and attempt["ephemeral_gib"] > 20 and cost["ephemeral_gb_seconds"] > 0
    assert cost["usd"] == pytest.approx(_expected_usd(cost), abs=1e-6) and cost["complete"] is True
    # q4 status and q4 runs show it
    status = _q4(stack, "status", "cost-local-1")
    assert "phase:     committed, attempt 1 of 3" in status.stdout
    assert f"cost:      ${cost['usd']:.6f} (" in status.stdout
    runs = _q4(stack, "runs").stdout.splitlines()
    assert any(line.split() == ["cost-local-1", "succeeded", f"${cost['usd']:.6f}"] for line in runs)
    assert runs[-1].startswith("total: $")


def test_a_relaunched_run_counts_the_crashed_attempt_from_its_stopped_event(stack, tmp_path):
    # GIVEN a run whose first task process is killed (a crash: the orchestrator relaunches it)
    data = _table(tmp_path / "crash.csv", 5000)
    submitted = _q4(stack, "submit", str(data), "--run-id", "cost-crash-1")
    assert submitted.returncode == 0, submitted.stderr
    ledger = stack["state_dir"] / "ledger.json"
    deadline, killed = time.monotonic() + 60, None
    while killed is None and time.monotonic() < deadline:
        entries = json.loads(ledger.read_text()).values() if ledger.exists() else []
        for entry in entries:
            if (
                load_bench().run_id_of(entry) == "cost-crash-1"
                and entry["status"] == "running"
                and entry["pid"]
            ):
                os.killpg(entry["pid"], signal.SIGKILL)
                killed = entry["task_arn"]
        time.sleep(0.05)
    assert killed is not None
    # WHEN attempt 2 commits
    deadline = time.monotonic() + 180
    while _q4(stack, "status", "cost-crash-1", "--json").stdout.count('"succeeded"') == 0:
        assert time.monotonic() < deadline, "the run did not succeed in time"
        time.sleep(1)
    # THEN its cost sums attempt 1 (ECS times from its STOPPED event, its size) and attempt 2 (its clock)
    cost = _manifest(stack, "cost-crash-1")["cost"]
    first, second = cost["attempts"]
    assert (first["attempt"], first["source"], first["task_arn"]) == (1, "ecs", killed)
    assert first["billed_s"] >= 60 and first["vcpu"] == second["vcpu"] == 1.0
    assert first["ephemeral_gib"] == second["ephemeral_gib"]
    assert (second["attempt"], second["source"]) == (2, "task_clock")
    assert cost["complete"] is True and cost["usd"] == pytest.approx(_expected_usd(cost), abs=1e-6)
    status = json.loads(_q4(stack, "status", "cost-crash-1", "--json").stdout)
    assert status["phase"] == {"phase": "committed", "attempt": 2, "max_attempts": 3}
