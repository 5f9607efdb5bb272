"""`q4 submit / status / runs / fetch` and scripts/submit_run.sh as real processes against moto.

`submit --wait` is followed through the real orchestrator handler (driven like the event source
mapping) and a real `q4-task` process for each task RunTask recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4_orchestrator.handler import lambda_handler
from support.pipeline import Pipeline, deliver_batches, drain, table

BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")
REPO = Path(__file__).resolve().parents[2]
SUBMIT_RUN = str(REPO / "scripts" / "submit_run.sh")


def cli_env(pipeline: Pipeline, aws_env: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        **aws_env,
        **pipeline.user_env,
    }


def q4(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([Q4, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def work_messages(pipeline: Pipeline) -> list[dict[str, Any]]:
    return drain(pipeline.work_queue_url)


def run_launched_tasks(pipeline: Pipeline, aws_env: dict[str, str], started: set[str]) -> None:
    """The Fargate stand-in: run `q4-task` for every task RunTask recorded that has not run yet."""
    ecs = boto3.client("ecs")
    arns = [a for a in ecs.list_tasks(cluster=pipeline.cluster)["taskArns"] if a not in started]
    if not arns:
        return
    for task in ecs.describe_tasks(cluster=pipeline.cluster, tasks=arns)["tasks"]:
        started.add(task["taskArn"])
        env = {
            item["name"]: item["value"] for item in task["overrides"]["containerOverrides"][0]["environment"]
        }
        subprocess.run(
            [str(BIN / "q4-task")],
            env={
                **aws_env,
                "Q4_INPUT_BUCKET": pipeline.archive_bucket,
                "Q4_ARTIFACTS_BUCKET": pipeline.artifacts_bucket,
                "Q4_DONE_QUEUE_URL": pipeline.done_queue_url,
                "Q4_TASK_ARN": task["taskArn"],
                **env,
            },
            capture_output=True,
            timeout=120,
            check=True,
        )


def test_missing_configuration_is_one_clear_sentence(tmp_path: Path, aws_env: dict[str, str]) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(table())
    env = {"PATH": str(BIN), **aws_env}
    for args in (["submit", str(data)], ["status", "r1"], ["runs"], ["fetch", "r1", "--to", str(tmp_path)]):
        process = q4(env, *args)
        assert process.returncode == 2
        assert process.stderr.strip().removesuffix(" [missing_configuration]") == (
            'q4: error: Q4_ARCHIVE_BUCKET is not set; run `eval "$(q4 local env)"` for the local stack, or '
            "export it from `terraform output` for AWS."
        )
        assert process.stdout == ""


def test_submit_uploads_and_sends_the_work_message(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "mydata.csv"
    data.write_bytes(table())
    env = cli_env(pipeline, aws_env)
    process = q4(env, "submit", str(data), "--run-id", "2025-08-25-001", "--mode", "enhanced")
    assert process.returncode == 0, process.stderr
    assert "run 2025-08-25-001" in process.stdout and "q4 status 2025-08-25-001" in process.stdout
    body = (
        boto3.client("s3")
        .get_object(Bucket=pipeline.archive_bucket, Key="run=2025-08-25-001/input/mydata.csv")["Body"]
        .read()
    )
    assert body == table()
    (message,) = work_messages(pipeline)
    assert message == {
        "run_id": "2025-08-25-001",
        "input_key": "run=2025-08-25-001/input/mydata.csv",
        "mode": "enhanced",
    }
    assert contract.parse_job(message).mode == "enhanced"
    # the status of a run whose message is still queued
    status = q4(env, "status", "2025-08-25-001")
    assert status.returncode == 0 and "submitted" in status.stdout
    # an input is never overwritten: a different file under the same run id is refused
    data.write_bytes(table(rows=10))
    again = q4(env, "submit", str(data), "--run-id", "2025-08-25-001")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert work_messages(pipeline) == []
    # bad run ids and files are refused before anything is uploaded
    bad = q4(env, "submit", str(data), "--run-id", "../x")
    assert bad.returncode == 2 and bad.stderr.startswith("q4: error: The run id '../x' is not valid")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert q4(env, "submit", str(text)).returncode == 2


def test_submit_wait_follows_the_run_and_leaves_other_done_messages(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN another run's done message waiting in the done queue
    sqs = boto3.client("sqs")
    foreign = {"schema": "q4.done/v1", "run_id": "someone-else", "status": "succeeded"}
    sqs.send_message(QueueUrl=pipeline.done_queue_url, MessageBody=json.dumps(foreign))
    data = tmp_path / "mydata.csv"
    data.write_bytes(table())
    env = cli_env(pipeline, aws_env)
    # WHEN `q4 submit --wait` runs while the orchestrator and the tasks do their work
    waiting = subprocess.Popen(
        [Q4, "submit", str(data), "--run-id", "w1", "--wait", "--timeout", "90"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: set[str] = set()
    deadline = time.monotonic() + 90
    while waiting.poll() is None and time.monotonic() < deadline:
        deliver_batches(pipeline.work_queue_url, lambda_handler)
        run_launched_tasks(pipeline, aws_env, started)
        time.sleep(0.3)
    stdout, stderr = waiting.communicate(timeout=30)
    # THEN it reports success and where the results are
    assert waiting.returncode == 0, stderr
    assert f"s3://{pipeline.artifacts_bucket}/run=w1/" in stdout
    assert "q4 fetch w1 --to DIR" in stdout and "succeeded" in stdout
    assert "run w1: " in stderr  # progress lines (plain, not a terminal)
    # and no done message was consumed: the foreign one and ours are both still there
    remaining = drain(pipeline.done_queue_url)
    assert foreign in remaining
    assert [m["status"] for m in remaining if m["run_id"] == "w1"] == ["succeeded"]

    # status, runs and fetch of the finished run
    status = q4(env, "status", "w1", "--json")
    doc = json.loads(status.stdout)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1 and doc["rows"]["input"] == 60
    human = q4(env, "status", "w1")
    assert "succeeded" in human.stdout and f"s3://{pipeline.artifacts_bucket}/run=w1/" in human.stdout
    fetched = q4(env, "fetch", "w1", "--to", str(tmp_path / "results"))
    assert fetched.returncode == 0, fetched.stderr
    run_dir = tmp_path / "results" / "run=w1"
    manifest = json.loads((run_dir / "MANIFEST.json").read_text())
    for artifact in manifest["artifacts"]:
        assert hashlib.sha256((run_dir / artifact["key"]).read_bytes()).hexdigest() == artifact["sha256"]
    assert (run_dir / "job.json").is_file() and not (run_dir / "attempts").exists()


def _submit_and_wait(env: dict[str, str], data: Path, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [Q4, "submit", str(data), "--run-id", run_id, "--wait", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_submit_wait_finds_its_rejection_behind_many_other_done_messages(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN 25 other runs' done messages in the done queue (more than one receive returns)
    sqs = boto3.client("sqs")
    foreign = [{"schema": "q4.done/v1", "run_id": f"other-{i}", "status": "succeeded"} for i in range(25)]
    for doc in foreign:
        sqs.send_message(QueueUrl=pipeline.done_queue_url, MessageBody=json.dumps(doc))
    data = tmp_path / "mydata.csv"
    data.write_bytes(table())
    waiting = _submit_and_wait(cli_env(pipeline, aws_env), data, "rj1")
    deadline = time.monotonic() + 60
    while not work_messages_seen(pipeline) and time.monotonic() < deadline:
        time.sleep(0.2)
    # WHEN the orchestrator rejects it (its input vanished before the message was handled)
    boto3.client("s3").delete_object(Bucket=pipeline.archive_bucket, Key="run=rj1/input/mydata.csv")
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    _, stderr = waiting.communicate(timeout=60)
    # THEN --wait found the rejection and says why; every done message is still in the queue
    assert waiting.returncode == 2, stderr
    assert "q4: run rj1 rejected: No input object" in stderr
    remaining = drain(pipeline.done_queue_url)
    assert sorted(m["run_id"] for m in remaining if m["run_id"] != "rj1") == sorted(
        d["run_id"] for d in foreign
    )
    assert [m["status"] for m in remaining if m["run_id"] == "rj1"] == ["rejected"]


def test_submit_wait_never_reports_another_jobs_result_as_its_own(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "mydata.csv"
    data.write_bytes(table())
    waiting = _submit_and_wait(cli_env(pipeline, aws_env), data, "rj2")
    deadline = time.monotonic() + 60
    while not work_messages_seen(pipeline) and time.monotonic() < deadline:
        time.sleep(0.2)
    # WHEN another submission under the same run id was accepted first, and even succeeded
    other = contract.parse_job({"run_id": "rj2", "input_key": "run=rj2/input/other.csv", "mode": "full"})
    s3 = boto3.client("s3")
    s3.put_object(Bucket=pipeline.artifacts_bucket, Key="run=rj2/job.json", Body=other.to_json())
    s3.put_object(
        Bucket=pipeline.artifacts_bucket,
        Key="run=rj2/MANIFEST.json",
        Body=json.dumps({"schema": "q4.manifest/v1", "run_id": "rj2", "status": "succeeded", "rows": {}}),
    )
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    _, stderr = waiting.communicate(timeout=60)
    # THEN ours is reported rejected as a run conflict, not as that run's success
    assert waiting.returncode == 2, stderr
    assert "q4: run rj2 rejected: Run rj2 was accepted with a different job" in stderr
    assert "succeeded" not in stderr


def work_messages_seen(pipeline: Pipeline) -> bool:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=pipeline.work_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) > 0


def test_runs_and_status_read_state_from_the_buckets(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    s3 = boto3.client("s3")
    bucket = pipeline.artifacts_bucket
    for run_id in ("a-ok", "b-failed", "c-running", "d-queued"):
        s3.put_object(Bucket=pipeline.archive_bucket, Key=f"run={run_id}/input/x.csv", Body=b"a,b\n1,2\n")
    for run_id in ("a-ok", "b-failed", "c-running"):
        job = contract.parse_job({"run_id": run_id, "input_key": f"run={run_id}/input/x.csv"})
        s3.put_object(Bucket=bucket, Key=contract.job_key(run_id), Body=job.to_json())
    s3.put_object(
        Bucket=bucket,
        Key="run=a-ok/MANIFEST.json",
        Body=json.dumps({"run_id": "a-ok", "mode": "standard", "rows": {"input": 1}, "artifacts": []}),
    )
    s3.put_object(
        Bucket=bucket,
        Key="run=b-failed/ERROR.json",
        Body=json.dumps({"run_id": "b-failed", "code": "too_few_rows", "message": "Too few rows."}),
    )
    s3.put_object(Bucket=bucket, Key="run=c-running/attempts/1.json", Body=b"{}")
    env = cli_env(pipeline, aws_env)
    listed = q4(env, "runs", "--json")
    assert json.loads(listed.stdout) == [
        {"run_id": "a-ok", "state": "succeeded", "cost_usd": None},
        {"run_id": "b-failed", "state": "failed", "cost_usd": None},
        {"run_id": "c-running", "state": "accepted", "cost_usd": None},
        {"run_id": "d-queued", "state": "submitted", "cost_usd": None},
    ]
    table_out = q4(env, "runs").stdout.splitlines()
    assert table_out[0].split() == ["RUN", "ID", "STATE", "COST"]
    assert table_out[2].split() == ["b-failed", "failed", "-"]
    failed = q4(env, "status", "b-failed")
    assert "too_few_rows: Too few rows." in failed.stdout
    unknown = q4(env, "status", "nope")
    assert unknown.returncode == 2 and "No run nope" in unknown.stderr
    not_done = q4(env, "fetch", "c-running", "--to", str(tmp_path))
    assert not_done.returncode == 2 and "has not finished (accepted)" in not_done.stderr
    failed_fetch = q4(env, "fetch", "b-failed", "--to", str(tmp_path))
    assert failed_fetch.returncode == 0 and (tmp_path / "run=b-failed" / "ERROR.json").is_file()


def test_submit_run_script_uses_the_plain_aws_cli(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "mydata.csv"
    data.write_bytes(table())
    env = cli_env(pipeline, aws_env)
    process = subprocess.run(
        [SUBMIT_RUN, str(data), "2025-08-25-001"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    (message,) = work_messages(pipeline)
    assert message == {
        "run_id": "2025-08-25-001",
        "input_key": "run=2025-08-25-001/input/mydata.csv",
        "mode": "standard",
    }
    # another file under the same key is refused by S3 itself (If-None-Match: *): input kept, nothing sent
    original = data.read_bytes()
    data.write_bytes(original.replace(b"\n", b"\r\n"))
    again = subprocess.run(
        [SUBMIT_RUN, str(data), "2025-08-25-001", "full"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    assert work_messages(pipeline) == []
    kept = (
        boto3.client("s3")
        .get_object(Bucket=pipeline.archive_bucket, Key="run=2025-08-25-001/input/mydata.csv")["Body"]
        .read()
    )
    assert kept == original
    # a file of another name under the same run is refused too: no stray second input
    other = tmp_path / "other.csv"
    other.write_bytes(original)
    stray = subprocess.run(
        [SUBMIT_RUN, str(other), "2025-08-25-001"], env=env, capture_output=True, text=True, timeout=60
    )
    assert stray.returncode == 2 and "run 2025-08-25-001 already exists" in stray.stderr
    listed = boto3.client("s3").list_objects_v2(Bucket=pipeline.archive_bucket, Prefix="run=2025-08-25-001/")
    assert [item["Key"] for item in listed["Contents"]] == ["run=2025-08-25-001/input/mydata.csv"]
    assert work_messages(pipeline) == []
    # a bad mode or a missing variable is one sentence
    bad = subprocess.run(
        [SUBMIT_RUN, str(data), "r9", "turbo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "unknown mode 'turbo'" in bad.stderr
    unset = {k: v for k, v in env.items() if k != "Q4_WORK_QUEUE_URL"}
    missing = subprocess.run(
        [SUBMIT_RUN, str(data)], env=unset, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2 and "Q4_WORK_QUEUE_URL is not set" in missing.stderr


@pytest.mark.parametrize("default_run_id", [True])
def test_script_default_run_id_is_valid(
    pipeline: Pipeline, aws_env: dict[str, str], tmp_path: Path, default_run_id: bool
) -> None:
    data = tmp_path / "my..odd name.csv"
    data.write_bytes(table())
    process = subprocess.run(
        [SUBMIT_RUN, str(data)],
        env=cli_env(pipeline, aws_env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    (message,) = work_messages(pipeline)
    job = contract.parse_job(message)
    assert job.run_id.endswith("-my") and job.input_key == f"run={job.run_id}/input/my..odd name.csv"
