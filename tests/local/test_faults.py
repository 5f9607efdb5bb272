"""Faults on the shared local stack (issue #5, item 2): each run still ends exactly once.

- a task SIGKILLed mid-upload (artifacts partly uploaded, no MANIFEST.json): `q4 status`/`q4 fetch`/`q4 runs`
  never show it complete; the STOPPED event relaunches it and attempt 2 commits;
- the same work message and the same STOPPED events delivered again and out of order, through the deployed
  orchestrator exactly as the runtime invokes it (`lambda_host.invoke` on the deployed function);
- a crash between commit and send (a STOPPED event with a crash exit code for a committed attempt): the
  done message is re-sent once, with the same content;
- RunTask failing (a `failures` entry) and throttled (ThrottlingException) for real on the orchestrator's
  HTTP path to ECS: a fault-injecting proxy named by `AWS_ENDPOINT_URL_ECS` in the deployed function's
  environment; SQS redelivers, then the DLQ;
- a relaunch whose RunTask keeps failing: the STOPPED event fails its 3 asynchronous deliveries and goes
  to the function's DLQ (its DeadLetterConfig), with Lambda's message attributes;
- the local runtime SIGKILLed and restarted (`q4 local up --detach`) while runs are in flight, and stopped
  gracefully (SIGTERM: its tasks die with it) and restarted;

and committed artifacts are never overwritten: every committed run's object versions and sha256 are
snapshotted when it commits and compared again when the module's tests are over (the ``observed`` fixture's
teardown), after every fault that ran.

Each test needs only fixtures (any order, any subset): the shared ``stack``, the module's ``observed``
mailbox, ``recovered_run`` (the kill-mid-upload scenario, run once for the two tests that look at it).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from q4_local import lambda_host
from q4_local import state as stack_state
from q4_local.runtime import LocalRuntime, RuntimeConfig, TaskRecord
from support.local_stack import load_bench

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
Q4 = str(Path(sys.executable).parent / "q4")


# ---------------------------------------------------------------- helpers


def clients(aws: dict[str, str]) -> dict[str, Any]:
    session = boto3.session.Session(
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        region_name=aws["AWS_REGION"],
    )
    return {
        name: session.client(name, endpoint_url=aws["AWS_ENDPOINT_URL"]) for name in ("s3", "sqs", "lambda")
    }


def submit(stack: dict[str, Any], run_id: str, rows: int, mode: str = "standard", copies: int = 1) -> str:
    """Upload a generated table and send its work message ``copies`` times; returns the message body."""
    aws = stack["aws"]
    c = clients(aws)
    c["s3"].put_object(
        Bucket=aws["Q4_ARCHIVE_BUCKET"],
        Key=f"run={run_id}/input/table.csv",
        Body=load_bench().table(rows, seed=rows),
    )
    body = json.dumps({"run_id": run_id, "input_key": f"run={run_id}/input/table.csv", "mode": mode})
    for _ in range(copies):
        c["sqs"].send_message(QueueUrl=aws["Q4_WORK_QUEUE_URL"], MessageBody=body)
    return body


@dataclass
class Observed:
    """What this module's tests saw on the shared stack: every done message drained (by run id; the drain
    deletes other runs' messages too) and each committed run's snapshot, taken when it committed."""

    done: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)


def drain(
    stack: dict[str, Any], seen: Observed, run_ids: list[str], timeout: float = 240, settle: float = 3
) -> None:
    """Drain the done queue into ``seen.done`` until every run id has a message, then ``settle`` s more."""
    aws = stack["aws"]
    load_bench().drain(
        clients(aws)["sqs"], aws["Q4_DONE_QUEUE_URL"], run_ids, timeout, settle, done=seen.done, sent={}
    )
    missing = [run_id for run_id in run_ids if run_id not in seen.done]
    assert not missing, f"no done message for {missing} within {timeout} s"


def drain_until(stack: dict[str, Any], seen: Observed, run_id: str, count: int, timeout: float = 60) -> None:
    """Drain until ``seen.done`` holds ``count`` done messages of ``run_id``."""
    deadline = time.monotonic() + timeout
    while len(seen.done.get(run_id, [])) < count:
        assert time.monotonic() < deadline, (
            f"{run_id}: {len(seen.done.get(run_id, []))} done messages, want {count}"
        )
        drain(stack, seen, [run_id], settle=1)


def tasks_of(stack: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """The runtime's ledger entries of a run, oldest first."""
    path = stack["state_dir"] / "ledger.json"
    entries = json.loads(path.read_text()).values() if path.exists() else []
    mine = [e for e in entries if load_bench().run_id_of(e) == run_id]
    return sorted(mine, key=lambda e: e["created_at"])


def outcomes_of(stack: dict[str, Any], run_id: str) -> list[str]:
    """The orchestrator's outcomes for a run, from its JSON log lines in lambda.log."""
    outcomes = []
    for line in (stack["state_dir"] / "lambda.log").read_text().splitlines():
        if run_id in line and line.startswith("{"):
            doc = json.loads(line)
            if doc.get("run_id") == run_id and "outcome" in doc:
                outcomes.append(str(doc["outcome"]))
    return outcomes


def keys_of(stack: dict[str, Any], run_id: str) -> set[str]:
    s3 = clients(stack["aws"])["s3"]
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Prefix=f"run={run_id}/"
    )
    return {item["Key"].removeprefix(f"run={run_id}/") for page in pages for item in page.get("Contents", [])}


def q4(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """The `q4` console script as a user runs it after `eval "$(q4 local env)"`."""
    return subprocess.run(
        [Q4, *args],
        env={**stack["env"], **stack["aws"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def snapshot(stack: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Every object version under the run (attempts/ bookkeeping aside) with the sha256 of its bytes."""
    s3 = clients(stack["aws"])["s3"]
    bucket = stack["aws"]["Q4_ARTIFACTS_BUCKET"]
    versions: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=f"run={run_id}/"):
        for version in page.get("Versions", []):
            if "/attempts/" not in version["Key"]:
                versions.setdefault(version["Key"], []).append(version["VersionId"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"run={run_id}/MANIFEST.json")["Body"].read())
    sha = {}
    for artifact in manifest["artifacts"]:
        body = s3.get_object(Bucket=bucket, Key=f"run={run_id}/{artifact['key']}")["Body"].read()
        sha[artifact["key"]] = hashlib.sha256(body).hexdigest()
        assert sha[artifact["key"]] == artifact["sha256"], f"{run_id}: {artifact['key']} != manifest"
    latest = {
        key: s3.head_object(Bucket=bucket, Key=key)["VersionId"] for key in versions if not key.endswith("/")
    }
    return {"versions": {k: sorted(v) for k, v in versions.items()}, "latest": latest, "sha256": sha}


def commit_snapshot(stack: dict[str, Any], seen: Observed, run_id: str) -> None:
    seen.committed[run_id] = snapshot(stack, run_id)


def runtime_record(stack: dict[str, Any]) -> stack_state.ProcessRecord:
    state = stack_state.load(stack["state_dir"])
    assert state is not None and state.runtime is not None and state.runtime.is_ours(), "runtime not up"
    return state.runtime


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def restart_runtime(stack: dict[str, Any], sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Stop the runtime with ``sig``, wait until it is gone, and bring it back with `q4 local up --detach`."""
    record = runtime_record(stack)
    os.kill(record.pid, sig)
    wait_until(lambda: not record.is_ours(), 30, "the runtime to stop", interval=0.1)
    up = subprocess.run(
        [Q4, "local", "up", "--detach"],
        env=stack["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert "restarting the local runtime" in up.stderr, up.stderr
    assert runtime_record(stack).pid != record.pid
    return up


def deliver_stopped(stack: dict[str, Any], records: list[TaskRecord]) -> list[Any]:
    """Send STOPPED events to the deployed orchestrator the way the runtime does; returns each outcome."""
    runtime = LocalRuntime(RuntimeConfig.from_stack(stack["state_dir"]))
    outcomes = []
    for record in records:
        event = runtime.stopped_event(record)
        targets = runtime.eventbridge.matching_lambda_targets(event)
        assert len(targets) == 1, targets
        invocation = lambda_host.invoke(
            runtime.functions.get(targets[0]),
            event,
            runtime.config.aws_env,
            runtime_dir=runtime.runtime_dir,
            log_path=runtime.invocation_log,
        )
        assert invocation.ok, invocation.error
        outcomes.append(invocation.result["outcome"])
    return outcomes


def without_duplicate_flag(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if key != "duplicate"}


# ---------------------------------------------------------------- the module's state


@pytest.fixture(scope="module")
def observed(stack: dict[str, Any]) -> Iterator[Observed]:
    """The module's mailbox of done messages and snapshots. When the module's tests are over: every run
    committed meanwhile still has the object versions and sha256 it had when it committed (whatever faults
    ran after it), and the runtime still serves after all the restarts (nothing left in the work queue)."""
    seen = Observed()
    yield seen
    for run_id, before in seen.committed.items():
        assert snapshot(stack, run_id) == before, f"{run_id}: committed artifacts were overwritten"
    # (the last test may have just sent work messages: they are consumed, not necessarily at once)
    sqs = clients(stack["aws"])["sqs"]
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    deadline = time.monotonic() + 120
    while True:
        queue = stack["aws"]["Q4_WORK_QUEUE_URL"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=names)["Attributes"]
        if attributes == dict.fromkeys(names, "0"):
            break
        assert time.monotonic() < deadline, f"the work queue was not consumed within 120 s: {attributes}"
        time.sleep(1)


# ---------------------------------------------------------------- kill mid-upload


@pytest.fixture(scope="module")
def recovered_run(
    stack: dict[str, Any], observed: Observed, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A large run whose task was SIGKILLed mid-upload (artifacts partly uploaded, no MANIFEST.json) and
    relaunched: what the user commands said while it was partial, then its done messages once it committed
    (attempt 2). Run once for the module: the kill takes a 200k-row run."""
    run_id = "fault-upload-1"
    tmp_path = tmp_path_factory.mktemp("recovered-run")
    submit(stack, run_id, rows=200_000)
    state_dir: Path = stack["state_dir"]

    def uploading() -> dict[str, Any] | None:
        for entry in tasks_of(stack, run_id):
            log = state_dir / "tasks" / entry["task_arn"].rsplit("/", 1)[-1] / "task.log"
            if entry["status"] == "running" and log.exists() and "Q4 job finished." in log.read_text():
                return entry
        return None

    entry = wait_until(uploading, 240, "the task to start uploading", interval=0.02)
    # Freeze the task at once, then let it run in 20 ms steps until its first artifact is in the bucket:
    # on a quiet machine the whole upload (MANIFEST included) can otherwise finish before the kill.
    os.killpg(entry["pid"], signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while not any(k.startswith("output/") for k in keys_of(stack, run_id)):
        assert time.monotonic() < deadline, "no artifact was uploaded within 60 s"
        os.killpg(entry["pid"], signal.SIGCONT)
        time.sleep(0.02)
        os.killpg(entry["pid"], signal.SIGSTOP)
    # The runtime is frozen (so nothing relaunches yet) and the task is SIGKILLed mid-upload
    runtime = runtime_record(stack)
    os.kill(runtime.pid, signal.SIGSTOP)
    try:
        os.killpg(entry["pid"], signal.SIGKILL)
        partial = keys_of(stack, run_id)
        status = q4(stack, "status", run_id, "--json")
        fetch = q4(stack, "fetch", run_id, "--to", str(tmp_path / "partial"))
        runs = q4(stack, "runs", "--json")
    finally:
        os.kill(runtime.pid, signal.SIGCONT)
    # The STOPPED event (exit 137) relaunches it and attempt 2 commits
    drain(stack, observed, [run_id])
    wait_until(lambda: [e["status"] for e in tasks_of(stack, run_id)] == ["delivered"] * 2, 30, "events")
    commit_snapshot(stack, observed, run_id)
    return {
        "run_id": run_id,
        "tmp_path": tmp_path,
        "partial": partial,
        "status": status,
        "fetch": fetch,
        "runs": runs,
        "done": list(observed.done[run_id]),
        "tasks": tasks_of(stack, run_id),
    }


def test_task_killed_mid_upload_never_looks_complete(stack, recovered_run):
    # GIVEN a large run whose task was SIGKILLed mid-upload (the recovered_run fixture)
    run_id, tmp_path = recovered_run["run_id"], recovered_run["tmp_path"]
    partial = recovered_run["partial"]
    assert "MANIFEST.json" not in partial, "the upload finished before the kill; use a larger input"
    assert "ERROR.json" not in partial and any(k.startswith("output/") for k in partial), partial
    # THEN the partial run never looked complete to the user commands
    status, fetch, runs = recovered_run["status"], recovered_run["fetch"], recovered_run["runs"]
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "accepted"
    assert fetch.returncode != 0 and "has not finished" in fetch.stderr, fetch.stderr
    assert not (tmp_path / "partial").exists()
    assert {"run_id": run_id, "state": "accepted", "cost_usd": None} in json.loads(runs.stdout)
    # AND the STOPPED event (exit 137) relaunched it; attempt 2 committed and is the only terminal state
    done = recovered_run["done"]
    assert [(m["status"], m["attempt"], m["duplicate"]) for m in done] == [("succeeded", 2, False)]
    keys = keys_of(stack, run_id)
    assert "MANIFEST.json" in keys and "ERROR.json" not in keys
    assert [e["exit_code"] for e in recovered_run["tasks"]] == [137, 0]
    fetched = q4(stack, "fetch", run_id, "--to", str(tmp_path / "complete"))  # verifies every sha256
    assert fetched.returncode == 0, fetched.stderr


# ---------------------------------------------------------------- duplicates, out of order


def test_duplicate_work_messages_and_stopped_events_change_nothing(stack, observed, recovered_run):
    # GIVEN a committed run that crashed once (recovered_run: attempt 1 killed, attempt 2 committed)
    run_id = recovered_run["run_id"]
    original = recovered_run["done"][0]
    tasks_before = recovered_run["tasks"]
    committed = snapshot(stack, run_id)
    done_before = len(observed.done[run_id])
    # WHEN the same work message arrives twice more
    body = json.dumps({"run_id": run_id, "input_key": f"run={run_id}/input/table.csv", "mode": "standard"})
    sqs = clients(stack["aws"])["sqs"]
    for _ in range(2):
        sqs.send_message(QueueUrl=stack["aws"]["Q4_WORK_QUEUE_URL"], MessageBody=body)
    # AND both STOPPED events are delivered again, out of order (attempt 2's, attempt 1's twice, attempt 2's)
    first, second = (TaskRecord(**entry) for entry in tasks_before)
    outcomes = deliver_stopped(stack, [second, first, first, second])
    # THEN the stale attempt-1 crash relaunches nothing, and attempt 2's exit 0 was already reported
    assert outcomes == ["reported", "stale", "stale", "reported"]
    drain_until(stack, observed, run_id, done_before + 2)
    duplicates = observed.done[run_id][done_before:]
    assert [m["duplicate"] for m in duplicates] == [True, True]
    assert all(without_duplicate_flag(m) == without_duplicate_flag(original) for m in duplicates)
    # WHEN attempt 2 "crashed between commit and send" (its STOPPED event carries a crash exit code)
    crashed = TaskRecord(**{**tasks_before[1], "exit_code": 1})
    assert deliver_stopped(stack, [crashed, crashed]) == ["resent", "stale"]
    # THEN the done message is re-sent once, with exactly the original content
    drain(stack, observed, [run_id], settle=3)
    assert observed.done[run_id][done_before + 2 :] == [original]
    # AND nothing was launched and nothing committed was rewritten
    assert len(tasks_of(stack, run_id)) == len(tasks_before)
    assert snapshot(stack, run_id) == committed


# ---------------------------------------------------------------- RunTask failing and throttled


class EcsFaultProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the emulator, except RunTask calls, which are answered by ``script``:
    ``"failures"`` (200 with a failures entry, no task), ``"throttle"`` (400 ThrottlingException) or
    ``"pass"``; a run id in ``always_fail`` gets a failures entry every time."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.script: list[str] = []
        self.always_fail: set[str] = set()
        self.fail_from_attempt: dict[str, int] = {}  # run id -> first attempt whose RunTask fails
        self.served: list[tuple[str, str]] = []  # (run id, answer)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: EcsFaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("X-Amz-Target", "").endswith(".RunTask"):
            run_id, attempt = _override_run(json.loads(body))
            with self.server.lock:
                if run_id in self.server.always_fail or attempt >= self.server.fail_from_attempt.get(
                    run_id, 1_000_000
                ):
                    answer = "failures"
                else:
                    answer = self.server.script.pop(0) if self.server.script else "pass"
                self.server.served.append((run_id, answer))
            if answer == "failures":
                return self._answer(200, {"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY"}]})
            if answer == "throttle":
                return self._answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
        upstream = self.server.upstream
        connection = http.client.HTTPConnection(str(upstream.hostname), upstream.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        connection.request("POST", self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        connection.close()

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _override_run(request: dict[str, Any]) -> tuple[str, int]:
    """(Q4_RUN_ID, Q4_ATTEMPT) of a RunTask request's container overrides."""
    env = {
        str(variable.get("name")): str(variable.get("value"))
        for override in request.get("overrides", {}).get("containerOverrides", [])
        for variable in override.get("environment", [])
    }
    return env.get("Q4_RUN_ID", ""), int(env.get("Q4_ATTEMPT", "1") or 1)


@pytest.fixture
def ecs_fault_proxy(stack: dict[str, Any]) -> Iterator[EcsFaultProxy]:
    """The deployed function's ECS calls go through an EcsFaultProxy (AWS_ENDPOINT_URL_ECS in its
    environment; the runtime is restarted to read it), and the work queue's visibility timeout is 3 s
    (deployed: 6 x the function timeout) so redeliveries come quickly. All restored afterwards."""
    aws = stack["aws"]
    c = clients(aws)
    function = json.loads((stack["state_dir"] / "stack.json").read_text())["outputs"][
        "orchestrator_function_name"
    ]
    variables = c["lambda"].get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    visibility = c["sqs"].get_queue_attributes(
        QueueUrl=aws["Q4_WORK_QUEUE_URL"], AttributeNames=["VisibilityTimeout"]
    )["Attributes"]["VisibilityTimeout"]
    proxy = EcsFaultProxy(aws["AWS_ENDPOINT_URL"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        c["lambda"].update_function_configuration(
            FunctionName=function,
            Environment={"Variables": {**variables, "AWS_ENDPOINT_URL_ECS": proxy.url}},
        )
        c["sqs"].set_queue_attributes(
            QueueUrl=aws["Q4_WORK_QUEUE_URL"], Attributes={"VisibilityTimeout": "3"}
        )
        restart_runtime(stack, signal.SIGTERM)
        yield proxy
    finally:
        c["lambda"].update_function_configuration(FunctionName=function, Environment={"Variables": variables})
        c["sqs"].set_queue_attributes(
            QueueUrl=aws["Q4_WORK_QUEUE_URL"], Attributes={"VisibilityTimeout": visibility}
        )
        restart_runtime(stack, signal.SIGTERM)
        proxy.shutdown()
        proxy.server_close()
    # the deployment reads back as it was (tests/local/test_plan.py checks the whole of it with terraform)
    restored = c["lambda"].get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    assert restored == variables, "the function's environment was not restored"
    assert (
        c["sqs"].get_queue_attributes(
            QueueUrl=aws["Q4_WORK_QUEUE_URL"], AttributeNames=["VisibilityTimeout"]
        )["Attributes"]["VisibilityTimeout"]
        == visibility
    ), "the work queue's visibility timeout was not restored"


def test_runtask_failures_and_throttling_are_retried_then_dead_lettered(stack, observed, ecs_fault_proxy):
    proxy = ecs_fault_proxy
    aws = stack["aws"]
    # GIVEN RunTask answers: one failures entry, then throttling on 4 calls in a row (boto3's standard
    # retry mode makes 4 attempts per call), then normally; and always a failures entry for another run
    proxy.script = ["failures", "throttle", "throttle", "throttle", "throttle"]
    proxy.always_fail = {"fault-dlq-1"}
    # WHEN both runs are submitted
    submit(stack, "fault-dlq-1", rows=100)
    time.sleep(0.5)
    submit(stack, "fault-runtask-1", rows=100)
    # THEN the first run is launched by a redelivery of its message, once, and succeeds
    drain(stack, observed, ["fault-runtask-1"], timeout=120, settle=0)
    assert [(m["status"], m["attempt"]) for m in observed.done["fault-runtask-1"]] == [("succeeded", 1)]
    answers = [answer for run_id, answer in proxy.served if run_id == "fault-runtask-1"]
    assert answers[:5] == ["failures", "throttle", "throttle", "throttle", "throttle"], proxy.served
    assert answers[5:] == ["pass"], proxy.served
    assert len(tasks_of(stack, "fault-runtask-1")) == 1
    # AND the always-failing run's message reaches the DLQ after maxReceiveCount (5) receives; the run
    # stays `accepted` (job.json, no launch), with no task, no terminal object and no done message
    sqs = clients(aws)["sqs"]
    dlq = json.loads((stack["state_dir"] / "stack.json").read_text())["outputs"]["dlq_url"]

    def in_dlq() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        )
        return [m for m in messages if json.loads(m["Body"]).get("run_id") == "fault-dlq-1"]

    dead = wait_until(in_dlq, 90, "the DLQ", interval=0.5)
    sqs.delete_message(QueueUrl=dlq, ReceiptHandle=dead[0]["ReceiptHandle"])
    assert sum(1 for run_id, _ in proxy.served if run_id == "fault-dlq-1") == 5, proxy.served
    assert tasks_of(stack, "fault-dlq-1") == []
    assert keys_of(stack, "fault-dlq-1") == {"job.json"}
    status = q4(stack, "status", "fault-dlq-1", "--json")
    assert json.loads(status.stdout)["state"] == "accepted", status.stdout
    drain(stack, observed, [], timeout=0, settle=2)
    assert "fault-dlq-1" not in observed.done
    commit_snapshot(stack, observed, "fault-runtask-1")


def test_relaunch_that_cannot_start_dead_letters_its_stopped_event(stack, observed, ecs_fault_proxy):
    # GIVEN a run whose relaunch (attempt 2) RunTask always answers with a failures entry
    proxy = ecs_fault_proxy
    run_id = "fault-relaunch-1"
    proxy.fail_from_attempt = {run_id: 2}
    c = clients(stack["aws"])
    outputs = json.loads((stack["state_dir"] / "stack.json").read_text())["outputs"]
    dlq = outputs["dlq_url"]
    dlq_arn = c["sqs"].get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    # (the function's DLQ, as Terraform's dead_letter_config set it, reads back from the emulator)
    function = c["lambda"].get_function_configuration(FunctionName=outputs["orchestrator_function_name"])
    assert function["DeadLetterConfig"] == {"TargetArn": dlq_arn}
    submit(stack, run_id, rows=30_000)
    entry = wait_until(
        lambda: next((e for e in tasks_of(stack, run_id) if e["status"] == "running"), None), 120, "the task"
    )
    # WHEN its task crashes (SIGKILL), so the orchestrator must relaunch it
    os.killpg(entry["pid"], signal.SIGKILL)
    # THEN the STOPPED event fails each of its 3 deliveries (the relaunch cannot start) ...
    final = ("dead_lettered", "undeliverable")
    [record] = wait_until(
        lambda: [e for e in tasks_of(stack, run_id) if e["status"] in final] or None, 60, "deliveries"
    )
    assert (record["status"], record["delivery_attempts"], record["exit_code"]) == ("dead_lettered", 3, 137)
    assert [answer for rid, answer in proxy.served if rid == run_id] == ["pass"] + ["failures"] * 3
    # ... and, as Lambda does with a failed asynchronous invocation, it went to the function's DLQ
    [dead_letter] = record["dead_letters"]
    assert dead_letter["queue"] == dlq_arn and dead_letter["function"] == function["FunctionArn"]

    def in_dlq() -> list[dict[str, Any]]:
        received = c["sqs"].receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0, MessageAttributeNames=["All"]
        )
        messages: list[dict[str, Any]] = received.get("Messages", [])
        return [m for m in messages if m["MessageId"] == dead_letter["message_id"]]

    [message] = wait_until(in_dlq, 30, "the STOPPED event in the DLQ", interval=0.5)
    event = json.loads(message["Body"])  # the event, unchanged: the crashed attempt 1, exit code 137
    assert event["detail-type"] == "ECS Task State Change" and event["detail"]["taskArn"] == entry["task_arn"]
    assert event["detail"]["containers"][0]["exitCode"] == 137
    [override] = event["detail"]["overrides"]["containerOverrides"]
    env = {variable["name"]: variable["value"] for variable in override["environment"]}
    assert (env["Q4_RUN_ID"], env["Q4_ATTEMPT"]) == (run_id, "1")
    attributes = message["MessageAttributes"]
    assert attributes["RequestID"] == {"DataType": "String", "StringValue": dead_letter["request_id"]}
    assert attributes["ErrorCode"] == {"DataType": "Number", "StringValue": "200"}  # a function error
    error = attributes["ErrorMessage"]["StringValue"]
    assert error.startswith(f"RunTask for run {run_id!r} attempt 2 ") and "RESOURCE:MEMORY" in error, error
    # ... the run stays accepted: no terminal object, no done message
    assert {"MANIFEST.json", "ERROR.json"} & keys_of(stack, run_id) == set()
    drain(stack, observed, [], timeout=0, settle=1)
    assert run_id not in observed.done
    # (inspected: the message is removed from the DLQ, as an operator would, so the DLQ stays as it was)
    c["sqs"].delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])


# ---------------------------------------------------------------- runtime restarts


def test_runtime_restarts_while_runs_are_in_flight(stack, observed):
    # GIVEN four runs in flight, each work message sent twice
    runs = [f"fault-restart-{i}" for i in range(4)]
    for i, run_id in enumerate(runs):
        submit(stack, run_id, rows=(10_000, 30_000)[i % 2], mode=("standard", "enhanced")[i % 2], copies=2)
    keys = clients(stack["aws"])["s3"]

    def launched() -> bool:
        for run_id in runs:
            listing = keys.list_objects_v2(
                Bucket=stack["aws"]["Q4_ARTIFACTS_BUCKET"], Prefix=f"run={run_id}/attempts/1.json"
            )
            if not listing.get("Contents"):
                return False
        return any(e["status"] == "running" for run_id in runs for e in tasks_of(stack, run_id))

    wait_until(launched, 120, "every run to be launched and one task running", interval=0.2)
    # WHEN the runtime is SIGKILLed (its tasks live on) and restarted a little later
    time.sleep(1.0)
    restart_runtime(stack, signal.SIGKILL)
    # THEN running tasks are adopted, none is rerun, and every run ends once
    drain(stack, observed, runs, timeout=240, settle=3)
    for run_id in runs:
        assert [(m["status"], m["attempt"]) for m in observed.done[run_id]] == [("succeeded", 1)], (
            observed.done[run_id]
        )
        assert len(tasks_of(stack, run_id)) == 1
        # the orchestrator launched once and saw the second copy in flight; the exit-0 STOPPED event may be
        # delivered twice (a runtime killed between delivering it and recording that: at-least-once)
        outcomes = Counter(outcomes_of(stack, run_id))
        assert (outcomes["launched"], outcomes["in_flight"]) == (1, 1), (run_id, outcomes)
        assert outcomes["reported"] >= 1 and set(outcomes) == {"launched", "in_flight", "reported"}, outcomes
        assert {"MANIFEST.json", "ERROR.json"} & keys_of(stack, run_id) == {"MANIFEST.json"}
        commit_snapshot(stack, observed, run_id)

    # GIVEN a run whose task is running WHEN the runtime is stopped gracefully (it terminates its tasks)
    run_id = "fault-restart-term"
    submit(stack, run_id, rows=50_000, mode="full")
    wait_until(lambda: any(e["status"] == "running" for e in tasks_of(stack, run_id)), 120, "the task to run")
    time.sleep(0.5)
    restart_runtime(stack, signal.SIGTERM)
    # THEN the restarted runtime reports the lost task (no exit code), attempt 2 runs and the run ends once
    drain(stack, observed, [run_id], timeout=240, settle=3)
    assert [(m["status"], m["attempt"]) for m in observed.done[run_id]] == [("succeeded", 2)], observed.done[
        run_id
    ]
    lost, second = tasks_of(stack, run_id)
    assert (lost["exit_code"], second["exit_code"]) == (None, 0)
    commit_snapshot(stack, observed, run_id)
    # AND the runs committed before the graceful restart were not rewritten by it
    for earlier in runs:
        assert snapshot(stack, earlier) == observed.committed[earlier], earlier
