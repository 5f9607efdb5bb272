"""The local Fargate stand-in enforces a task's ephemeral storage on its scratch dir (docs/local-stack.md,
"Ephemeral storage"), and Q4 runs an input larger than that quota (issue #11).

The quota is the task's ephemeral storage (RunTask's overrides, else the definition's, else 20 GiB) capped
by the stack's local-only scratch limit; a tmpfs of that size (a write past it fails with ENOSPC, as on
Fargate) where the runtime may mount, else a watcher that stops the task as a crash. The toy tasks here
are small Python programs (tests/support/toy_task.py) run by the stand-in against the moto server; the
proof runs `q4 submit --wait` on the shared local stack with `--scratch-limit-mib`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from q4_local import scratch as scratch_quota
from q4_local import state as stack_state
from q4_local.eventbridge import EventBridge
from q4_local.fargate import Fargate
from q4_local.ledger import Ledger, TaskRecord
from support import toy_task
from support.stack_runs import ledger_entries, q4, table, wait_stopped

# Prints the metadata's Reserved, writes WRITE_MIB MiB into its scratch dir one MiB at a time (each line
# "wrote N" once written), waits until the metadata's Utilized shows it (at most UTILIZED_WAIT s), then
# lingers LINGER s and exits 0. A write past a tmpfs quota raises OSError (ENOSPC): a traceback, exit 1.
PROGRAM = """
import json, os, pathlib, time, urllib.request
def metrics():
    with urllib.request.urlopen(os.environ["ECS_CONTAINER_METADATA_URI_V4"] + "/task") as response:
        return json.loads(response.read())["EphemeralStorageMetrics"]
print("reserved", metrics()["Reserved"], flush=True)
block = b"q4" * (1 << 19)
with open(pathlib.Path(os.environ["Q4_SCRATCH_DIR"], "fill"), "wb") as out:
    for i in range(int(os.environ["WRITE_MIB"])):
        out.write(block)
        out.flush()
        print("wrote", i + 1, flush=True)
deadline = time.monotonic() + float(os.environ.get("UTILIZED_WAIT", "0"))
while metrics()["Utilized"] < int(os.environ["WRITE_MIB"]) and time.monotonic() < deadline:
    time.sleep(0.05)
print("utilized", metrics()["Utilized"], flush=True)
time.sleep(float(os.environ.get("LINGER", "0")))
"""

LIMIT_MIB = 8
#: The toy definition asks for Fargate's minimum, 21 GiB, as Q4's does; the local limit caps it.
DEFINITION_STORAGE = {"ephemeralStorage": {"sizeInGiB": 21}}


def _fargate(aws_env: dict[str, str], tmp_path: Path, limit: int | None, mount: bool) -> tuple[Fargate, str]:
    cluster = boto3.client("ecs").create_cluster(clusterName=f"quota-{time.monotonic_ns()}")["cluster"]
    fargate = Fargate(
        boto3.client("ecs"), cluster["clusterArn"], Ledger(tmp_path / "ledger.json"), tmp_path / "tasks",
        dict(aws_env), 2, scratch_limit_mib=limit, mount_scratch=mount,
    )  # fmt: skip
    return fargate, str(cluster["clusterArn"])


def _until_stopped(fargate: Fargate, arn: str, timeout: float = 60) -> TaskRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fargate.notice_stops()
        fargate.reap()
        fargate.take_on()
        fargate.start_pending()
        record = fargate.ledger.tasks.get(arn)
        if record is not None and record.status == "exited":
            return record
        time.sleep(0.05)
    fargate.shutdown(grace_s=1)
    raise AssertionError(f"task {arn} did not stop within {timeout} s: {fargate.ledger.tasks.get(arn)}")


def _task_log(fargate: Fargate, arn: str) -> str:
    return (fargate.tasks_dir / arn.rsplit("/", 1)[-1] / "task.log").read_text()


def _wrote(log: str) -> int:
    return max((int(line.split()[1]) for line in log.splitlines() if line.startswith("wrote ")), default=0)


MECHANISMS = [
    pytest.param(True, id="tmpfs"),
    pytest.param(False, id="watcher"),
]


def _skip_unless_mountable(mount: bool) -> None:
    if mount and not scratch_quota.can_mount():
        pytest.skip("a tmpfs scratch needs a root runtime on Linux; the watcher enforces the quota here")


@pytest.mark.parametrize("mount", MECHANISMS)
def test_a_task_writing_past_its_quota_fails_as_a_crash(
    aws_env: dict[str, str], tmp_path: Path, mount: bool
) -> None:
    # GIVEN the stand-in with an 8 MiB scratch limit and a task that writes 24 MiB into its scratch dir, then
    # would wait two minutes and exit 0
    _skip_unless_mountable(mount)
    fargate, cluster = _fargate(aws_env, tmp_path, LIMIT_MIB, mount)
    definition = toy_task.register(PROGRAM, "quota", task=DEFINITION_STORAGE)
    started = time.monotonic()
    arn = toy_task.run(cluster, definition, {"WRITE_MIB": "24", "LINGER": "120"})

    # WHEN it runs
    record = _until_stopped(fargate, arn)

    # THEN it saw the capped quota as its reserved storage, and it ended long before it would have
    log = _task_log(fargate, arn)
    assert log.startswith(f"reserved {LIMIT_MIB}\n"), log
    assert time.monotonic() - started < 60
    bridge = EventBridge(None, None, None, None, fargate.ledger, cluster, "x")  # type: ignore[arg-type]
    detail = bridge.stopped_event(record)["detail"]
    if mount:
        # AND on a tmpfs its write past the quota failed as on Fargate (ENOSPC): its own crash, exit code 1
        assert "No space left on device" in log, log
        assert _wrote(log) <= LIMIT_MIB
        assert record.exit_code == 1 and detail["containers"][0]["exitCode"] == 1
    else:
        # AND the watcher stopped it without an exit code (a crash), saying why, once it held more than 8 MiB
        assert record.exit_code is None and "exitCode" not in detail["containers"][0]
        assert record.reason is not None and record.reason.startswith("EphemeralStorageExhausted: ")
        assert f"its {LIMIT_MIB} MiB of ephemeral storage" in record.reason
        assert (detail["stopCode"], detail["stoppedReason"]) == ("EssentialContainerExited", record.reason)
        assert detail["containers"][0]["reason"] == record.reason
        assert LIMIT_MIB <= _wrote(log) <= 24
    # AND its scratch volume is gone with it (no mount left behind)
    assert not os.path.ismount(fargate.tasks_dir / arn.rsplit("/", 1)[-1] / "scratch")


@pytest.mark.parametrize("mount", MECHANISMS)
def test_a_task_within_its_quota_runs_and_sees_what_it_uses(
    aws_env: dict[str, str], tmp_path: Path, mount: bool
) -> None:
    # GIVEN the stand-in with an 8 MiB scratch limit and a task that writes 5 MiB
    _skip_unless_mountable(mount)
    fargate, cluster = _fargate(aws_env, tmp_path, LIMIT_MIB, mount)
    definition = toy_task.register(PROGRAM, "quota", task=DEFINITION_STORAGE)
    arn = toy_task.run(cluster, definition, {"WRITE_MIB": "5", "UTILIZED_WAIT": "20"})
    # WHEN it runs, THEN it ends with its own exit code 0, having read Utilized grow to what it wrote
    record = _until_stopped(fargate, arn)
    log = _task_log(fargate, arn)
    assert record.exit_code == 0, log
    assert log.splitlines()[0] == f"reserved {LIMIT_MIB}" and "utilized 5" in log.splitlines(), log


def test_without_a_limit_the_quota_is_the_tasks_ephemeral_storage(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN no local limit: a task of a 21 GiB definition, one with a RunTask override of 30 GiB, and one of a
    # definition that sets none (Fargate's 20 GiB)
    fargate, cluster = _fargate(aws_env, tmp_path, None, False)
    sized = toy_task.register(PROGRAM, "quota", task=DEFINITION_STORAGE)
    unsized = toy_task.register(PROGRAM, "quota")
    env = {"WRITE_MIB": "1"}
    arns = [
        toy_task.run(cluster, sized, env),
        toy_task.run(cluster, sized, env, ephemeralStorage={"sizeInGiB": 30}),
        toy_task.run(cluster, unsized, env),
    ]
    # WHEN they run, THEN each one's metadata reserves its own storage, and none is a mount
    reserved = []
    for arn in arns:
        assert _until_stopped(fargate, arn).exit_code == 0
        reserved.append(_task_log(fargate, arn).splitlines()[0])
    assert reserved == ["reserved 21504", "reserved 30720", "reserved 20480"]


def test_release_all_unmounts_the_scratch_a_dead_runtime_left(tmp_path: Path) -> None:
    # GIVEN a task's scratch tmpfs still mounted (its runtime died before the task stopped)
    _skip_unless_mountable(True)
    scratch = tmp_path / "tasks" / "abc" / "scratch"
    quota = scratch_quota.prepare(scratch, 1, mount=True)
    assert quota.mounted and os.path.ismount(scratch)
    (scratch / "left").write_bytes(b"x" * 4096)
    assert scratch_quota.usage_bytes(scratch) >= 4096
    # WHEN `q4 local down` forgets the task folders, THEN nothing stays mounted
    scratch_quota.release_all(tmp_path / "tasks")
    assert not os.path.ismount(scratch)


# -- the proof: an input larger than the quota, through the local stack -----------------------------------

PROOF_LIMIT_MIB = 8
CSV_ROWS = 1_500_000  # ~26 MB of CSV
PARQUET_ROWS = 400_000  # 6 random float64 features: ~20 MB of Parquet


def _parquet(path: Path) -> int:
    rng = np.random.default_rng(11)
    columns = {"id": pa.array([f"p{i}" for i in range(PARQUET_ROWS)])}
    columns.update({f"f_{j}": pa.array(rng.normal(size=PARQUET_ROWS)) for j in range(6)})
    pq.write_table(pa.table(columns), path)
    return PARQUET_ROWS


@pytest.fixture
def limited_stack(stack: dict[str, Any]) -> Any:
    """The shared local stack with its scratch limit at 8 MiB (runtime restarted), set back to none after."""
    up = q4(stack, "local", "up", "--detach", "--scratch-limit-mib", str(PROOF_LIMIT_MIB))
    assert up.returncode == 0, up.stderr
    try:
        yield stack
    finally:
        back = q4(stack, "local", "up", "--detach", "--scratch-limit-mib", "0")
        assert back.returncode == 0, back.stderr
        after = stack_state.load(stack["state_dir"])
        assert after is not None and after.scratch_limit_mib is None


def _task_logs(stack: dict[str, Any], run_id: str) -> str:
    """What each of the run's tasks said about its failure: the last OS error (``[Errno``) its log names,
    else its last line."""
    said = []
    for entry in ledger_entries(stack["state_dir"], run_id):
        path = stack["state_dir"] / "tasks" / entry["task_arn"].rsplit("/", 1)[-1] / "task.log"
        lines = path.read_text().splitlines() if path.exists() else [""]
        errors = [_error_of(line) for line in lines if "[Errno" in line]
        said.append(f"--- task exit {entry['exit_code']} ({entry['reason']}): {(errors or lines)[-1][-300:]}")
    return "\n".join(said)


def _error_of(line: str) -> str:
    """The last line of a structured log line's ``exception`` (the line itself when it has none)."""
    try:
        exception = str(json.loads(line).get("exception") or "")
    except (ValueError, AttributeError):
        return line
    return exception.strip().splitlines()[-1] if exception.strip() else line


def test_the_limit_is_recorded_and_reaches_the_stacks_tasks(
    limited_stack: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN the shared stack with `--scratch-limit-mib 8`: recorded in stack.json, which the runtime reads
    state = stack_state.load(limited_stack["state_dir"])
    assert state is not None and state.scratch_limit_mib == PROOF_LIMIT_MIB
    assert state.runtime is not None and state.runtime.is_ours()
    # WHEN a small run goes through it
    data = tmp_path / "small.csv"
    data.write_bytes(table(300))
    run_id = f"scratch-quota-small-{time.monotonic_ns()}"
    submitted = q4(limited_stack, "submit", str(data), "--run-id", run_id, "--wait", "--timeout", "200")
    # THEN it succeeds, its task's metadata reserving the 8 MiB quota (not the definition's 21 GiB)
    assert submitted.returncode == 0, f"{submitted.stderr}\n{_task_logs(limited_stack, run_id)}"
    wait_stopped(limited_stack["state_dir"], [run_id])
    (entry,) = ledger_entries(limited_stack["state_dir"], run_id)
    assert entry["exit_code"] == 0 and entry["task"]["ephemeralStorage"]["sizeInGiB"] >= 21
    metadata = (
        limited_stack["state_dir"] / "tasks" / entry["task_arn"].rsplit("/", 1)[-1] / "metadata" / "task"
    )
    assert json.loads(metadata.read_text())["EphemeralStorageMetrics"]["Reserved"] == PROOF_LIMIT_MIB


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_an_input_larger_than_the_scratch_quota_runs_through_the_stack(
    limited_stack: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    # GIVEN a stack whose tasks have 8 MiB of scratch, and an input several times that size
    stack = limited_stack
    data = tmp_path / f"big.{kind}"
    if kind == "csv":
        data.write_bytes(table(CSV_ROWS))
        rows = CSV_ROWS
    else:
        rows = _parquet(data)
    assert data.stat().st_size > 2 * PROOF_LIMIT_MIB * 1048576
    run_id = f"scratch-quota-{kind}-{time.monotonic_ns()}"

    # WHEN the user submits it and waits, then fetches the run
    submitted = q4(stack, "submit", str(data), "--run-id", run_id, "--wait", "--timeout", "400", timeout=450)

    # THEN it succeeded (the task never held more than its quota in scratch) ...
    assert submitted.returncode == 0, f"{submitted.stdout}{submitted.stderr}\n{_task_logs(stack, run_id)}"
    fetched = q4(stack, "fetch", run_id, "--to", str(tmp_path / "out"), timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    # ... in one attempt that exited 0, its task metadata reserving the 8 MiB quota ...
    wait_stopped(stack["state_dir"], [run_id])
    entries = ledger_entries(stack["state_dir"], run_id)
    assert [e["exit_code"] for e in entries] == [0], _task_logs(stack, run_id)
    metadata = stack["state_dir"] / "tasks" / entries[0]["task_arn"].rsplit("/", 1)[-1] / "metadata" / "task"
    assert json.loads(metadata.read_text())["EphemeralStorageMetrics"]["Reserved"] == PROOF_LIMIT_MIB
    manifest = json.loads((tmp_path / "out" / f"run={run_id}" / "MANIFEST.json").read_text())
    # ... and the fetched row outputs hold every input row once
    output = tmp_path / "out" / f"run={run_id}" / "output"
    seen = np.concatenate(
        [pcsv.read_csv(output / f"Q_{name}.csv")["q4_row"].to_numpy() for name in ("keep", "discard")]
    )
    assert len(seen) == rows and np.array_equal(np.sort(seen), np.arange(rows)), manifest.get("counts")
