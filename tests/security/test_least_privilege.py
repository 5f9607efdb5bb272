"""Least privilege, enforced: the real orchestrator and the real task run with the credentials of their own
IAM roles (assumed through the emulator's STS, IAM enforcement on) and do their job; every call outside it
is denied.

Setup (tests/security/conftest.py): infrastructure/ applied by the real Terraform to a private moto server,
then enforcement switched on. The orchestrator receives the work messages with its role (as the event source
mapping does with the function's role), its handler runs in a subprocess with only the role's credentials,
and the launched tasks run as ``q4-task`` subprocesses with only the task role's credentials.

What the emulator checks and what it cannot (docs/reliability.md, "Least privilege"): actions and resource
ARNs of identity policies (S3 object and bucket ARNs, SQS queue ARNs, the RunTask task definition), the
request signature and the session token. It ignores policy conditions (``s3:prefix``, ``ecs:cluster``,
``iam:PassedToService``) and never checks ``iam:PassRole``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.enforcing import EnforcingStack, is_denied

pytestmark = pytest.mark.slow

HANDLER = """
import json, sys
from q4_orchestrator.handler import lambda_handler
event = json.load(open(sys.argv[1]))
result = lambda_handler(event, None)
json.dump(result, open(sys.argv[2], "w"))
"""
MODEL_KEY = "run=sec-1/model/q4_model.json"
WORK = [
    {"run_id": "sec-1", "input_key": "run=sec-1/input/data.csv", "mode": "enhanced"},
    {"run_id": "sec-2", "input_key": "run=sec-2/input/data.csv", "model_key": MODEL_KEY},
    {"run_id": "sec-3", "input_key": "run=sec-3/input/data.csv"},
    # a model_key that is not a saved model: another run's output (the task may not read it)
    {"run_id": "sec-4", "input_key": "run=sec-4/input/data.csv", "model_key": "run=sec-1/output/er.json"},
    {"run_id": "sec-missing", "input_key": "run=sec-missing/input/none.csv"},
]


def run_orchestrator(stack: EnforcingStack, event: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The real Lambda handler in a subprocess holding only the orchestrator role's credentials."""
    event_path, result_path = tmp / "event.json", tmp / "result.json"
    event_path.write_text(json.dumps(event))
    env = stack.process_env(
        "orchestrator", {**stack.lambda_env, "POWERTOOLS_SERVICE_NAME": "q4-orchestrator"}
    )
    result = subprocess.run(
        [sys.executable, "-c", HANDLER, str(event_path), str(result_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"orchestrator failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return dict(json.loads(result_path.read_text()))


def sqs_event(stack: EnforcingStack, messages: list[dict[str, Any]]) -> dict[str, Any]:
    from q4_local.event_source import sqs_record as _sqs_record

    queue_arn = stack.client("admin", "sqs").get_queue_attributes(
        QueueUrl=stack.outputs["work_queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    return {"Records": [_sqs_record(m, queue_arn, "us-east-1") for m in messages]}


def deliver_work(stack: EnforcingStack, body: dict[str, Any], tmp: Path) -> None:
    """Send ``body`` to the work queue (the administrator) and hand it to the orchestrator as the event source
    mapping does: received and deleted with the orchestrator role's credentials; no batch item failure."""
    queue = stack.outputs["work_queue_url"]
    stack.client("admin", "sqs").send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    orch_sqs = stack.client("orchestrator", "sqs")
    messages = orch_sqs.receive_message(QueueUrl=queue, AttributeNames=["All"], WaitTimeSeconds=2)["Messages"]
    assert run_orchestrator(stack, sqs_event(stack, messages), tmp) == {"batchItemFailures": []}
    orch_sqs.delete_message(QueueUrl=queue, ReceiptHandle=messages[0]["ReceiptHandle"])


def run_task(stack: EnforcingStack, run_id: str, attempt: int = 1) -> tuple[int, str]:
    """``q4-task`` for the task the orchestrator launched, with only the task role's credentials."""
    admin_s3, admin_ecs = stack.client("admin", "s3"), stack.client("admin", "ecs")
    record = json.loads(
        admin_s3.get_object(
            Bucket=stack.outputs["artifacts_bucket"], Key=f"run={run_id}/attempts/{attempt}.json"
        )["Body"].read()
    )
    task = admin_ecs.describe_tasks(cluster=stack.outputs["cluster_name"], tasks=[record["task_arn"]])[
        "tasks"
    ][0]
    override = task["overrides"]["containerOverrides"][0]
    scratch = stack.scratch / f"{run_id}-{attempt}"
    scratch.mkdir()
    env = stack.process_env(
        "task",
        {
            **stack.task_env,
            **{item["name"]: item["value"] for item in override.get("environment", [])},
            "Q4_TASK_ARN": record["task_arn"],
            "Q4_SCRATCH_DIR": str(scratch),
        },
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "q4-task")],
        env=env, cwd=scratch, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def done_messages(stack: EnforcingStack) -> dict[str, list[dict[str, Any]]]:
    """Every done message so far, by run id (read and deleted with the administrator's credentials)."""
    sqs = stack.client("admin", "sqs")
    by_run: dict[str, list[dict[str, Any]]] = {}
    while True:
        batch = sqs.receive_message(
            QueueUrl=stack.outputs["done_queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not batch:
            return by_run
        for message in batch:
            body = json.loads(message["Body"])
            by_run.setdefault(str(body.get("run_id")), []).append(body)
            sqs.delete_message(
                QueueUrl=stack.outputs["done_queue_url"], ReceiptHandle=message["ReceiptHandle"]
            )


@pytest.fixture(scope="module")
def pipeline(enforcing_stack: EnforcingStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The work messages through the orchestrator, then the tasks of sec-1 and sec-2 (enforced)."""
    stack = enforcing_stack
    admin_sqs, orch_sqs = stack.client("admin", "sqs"), stack.client("orchestrator", "sqs")
    queue = stack.outputs["work_queue_url"]
    for body in WORK:
        admin_sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    received: list[dict[str, Any]] = []
    for _ in range(30):  # the event source mapping receives with the function's role
        received += orch_sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=1
        ).get("Messages", [])
        if len(received) >= len(WORK):
            break
    assert len(received) == len(WORK), f"received {len(received)} of {len(WORK)} work messages"
    batch = run_orchestrator(stack, sqs_event(stack, received), tmp_path_factory.mktemp("orchestrator"))
    failed = {item["itemIdentifier"] for item in batch.get("batchItemFailures", [])}
    for message in received:
        if message["MessageId"] not in failed:
            orch_sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    tasks = {run_id: run_task(stack, run_id) for run_id in ("sec-1", "sec-2")}
    return {"batch": batch, "tasks": tasks, "done": done_messages(stack)}


# ---------------------------------------------------------------- the emulator enforces at all


def test_enforcement_is_on(enforcing_stack: EnforcingStack) -> None:
    """The emulator's usual any-key credentials are refused and a signature must match: denials below are
    the policies' doing, not an emulator that denies everything (the administrator passes)."""
    s3 = enforcing_stack.client("admin", "s3")
    assert s3.list_buckets()["Buckets"]
    import boto3

    anonymous = boto3.client(
        "s3",
        endpoint_url=enforcing_stack.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with pytest.raises(ClientError) as excinfo:
        anonymous.list_buckets()
    assert excinfo.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    forged = dict(enforcing_stack.credentials["task"], aws_secret_access_key="not-the-secret")
    forger = boto3.client("s3", endpoint_url=enforcing_stack.endpoint_url, region_name="us-east-1", **forged)
    with pytest.raises(ClientError) as excinfo:
        forger.get_object(Bucket=enforcing_stack.outputs["archive_bucket"], Key="run=sec-1/input/data.csv")
    assert excinfo.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


# ---------------------------------------------------------------- each program does its job


def test_orchestrator_accepts_launches_and_rejects_with_its_own_role(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any]
) -> None:
    assert pipeline["batch"] == {"batchItemFailures": []}
    admin_s3 = enforcing_stack.client("admin", "s3")
    bucket = enforcing_stack.outputs["artifacts_bucket"]
    for run_id in ("sec-1", "sec-2", "sec-3"):
        keys = [
            o["Key"] for o in admin_s3.list_objects_v2(Bucket=bucket, Prefix=f"run={run_id}/")["Contents"]
        ]
        assert f"run={run_id}/job.json" in keys and f"run={run_id}/attempts/1.json" in keys
    tasks = enforcing_stack.client("admin", "ecs").list_tasks(cluster=enforcing_stack.outputs["cluster_name"])
    assert len(tasks["taskArns"]) >= 3  # sec-1..3 launched; sec-4 (a model_key it may not read) rejected
    rejected = pipeline["done"]["sec-missing"]
    assert [(m["status"], m["error"]["code"]) for m in rejected] == [("rejected", "input_not_found")]


def test_task_runs_a_job_with_its_own_role(enforcing_stack: EnforcingStack, pipeline: dict[str, Any]) -> None:
    code, log = pipeline["tasks"]["sec-1"]
    assert code == 0, log[-3000:]
    manifest = json.loads(
        enforcing_stack.client("admin", "s3")
        .get_object(Bucket=enforcing_stack.outputs["artifacts_bucket"], Key="run=sec-1/MANIFEST.json")["Body"]
        .read()
    )
    keys = {a["key"] for a in manifest["artifacts"]}
    assert {"output/Q_keep.csv", "output/er.json", "model/q4_model.json"} <= keys
    assert [m["status"] for m in pipeline["done"]["sec-1"]] == ["succeeded"]


def test_task_applies_a_saved_model_with_its_own_role(pipeline: dict[str, Any]) -> None:
    code, log = pipeline["tasks"]["sec-2"]
    assert code == 0, log[-3000:]
    assert [m["status"] for m in pipeline["done"]["sec-2"]] == ["succeeded"]


def test_orchestrator_duplicate_and_crash_recovery_with_its_own_role(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any], tmp_path: Path
) -> None:
    """A resent work message of a committed run (reads MANIFEST.json, sends a duplicate) and a crashed task
    (STOPPED, exit 1: reads the run's records, RunTask attempt 2, writes its launch record)."""
    stack = enforcing_stack
    deliver_work(stack, WORK[0], tmp_path)
    duplicates = done_messages(stack)["sec-1"]
    assert [(m["status"], m.get("duplicate")) for m in duplicates] == [("succeeded", True)]

    admin_s3 = stack.client("admin", "s3")
    record = json.loads(
        admin_s3.get_object(Bucket=stack.outputs["artifacts_bucket"], Key="run=sec-3/attempts/1.json")[
            "Body"
        ].read()
    )
    task = stack.client("admin", "ecs").describe_tasks(
        cluster=stack.outputs["cluster_name"], tasks=[record["task_arn"]]
    )["tasks"][0]
    event = {
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "detail": {
            "clusterArn": task["clusterArn"],
            "taskArn": task["taskArn"],
            "lastStatus": "STOPPED",
            "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited",
            "containers": [{"name": "q4", "exitCode": 1, "lastStatus": "STOPPED"}],
            "overrides": task["overrides"],
        },
    }
    assert run_orchestrator(stack, event, tmp_path) == {"outcome": "relaunched"}
    second = admin_s3.get_object(Bucket=stack.outputs["artifacts_bucket"], Key="run=sec-3/attempts/2.json")
    second_arn = json.loads(second["Body"].read())["task_arn"]

    # A STOPPED event redriven from the DLQ through the work queue (`q4 dlq --redrive`) for attempt 2, which
    # ECS still reports running: DescribeTasks on the run's own task is allowed, and nothing is launched.
    running = stack.client("admin", "ecs").describe_tasks(
        cluster=stack.outputs["cluster_name"], tasks=[second_arn]
    )["tasks"][0]
    detail = {**event["detail"], "taskArn": second_arn, "overrides": running["overrides"]}
    redriven = {**event, "detail": detail}
    deliver_work(stack, redriven, tmp_path)
    attempts = admin_s3.list_objects_v2(
        Bucket=stack.outputs["artifacts_bucket"], Prefix="run=sec-3/attempts/"
    )
    assert sorted(item["Key"] for item in attempts["Contents"]) == [
        "run=sec-3/attempts/1.json",
        "run=sec-3/attempts/1.stopped.json",  # what attempt 1's STOPPED event said (the run's cost)
        "run=sec-3/attempts/2.json",
    ]


def test_a_sharded_run_advances_with_each_roles_own_permissions(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any], tmp_path: Path
) -> None:
    """A sharded run (docs/contract.md, "Sharded runs"): the orchestrator plans it and launches pass 1,
    and on a STOPPED event lists the partials and launches pass 2, and relaunches a crashed step, with its
    role; the task reads the plan and writes and reads a partial with its role."""
    stack = enforcing_stack
    run_id, bucket = "sec-shards", stack.outputs["artifacts_bucket"]
    admin_s3 = stack.client("admin", "s3")
    rows = "\n".join(f"{i},{i * 7 % 13},{i * 3 % 5}" for i in range(2000))
    admin_s3.put_object(
        Bucket=stack.outputs["archive_bucket"], Key=f"run={run_id}/input/data.csv", Body=f"a,b,c\n{rows}\n"
    )
    body = {"run_id": run_id, "input_key": f"run={run_id}/input/data.csv", "shards": 2}
    deliver_work(stack, body, tmp_path)

    def record(step: str, shard: int, attempt: int = 1) -> dict[str, Any]:
        key = f"run={run_id}/shards/{step}/{shard:05d}/attempts/{attempt}.json"
        return dict(json.loads(admin_s3.get_object(Bucket=bucket, Key=key)["Body"].read()))

    # the task reads the plan and writes its partial (and reads it back) with its own role
    task_s3 = stack.client("task", "s3")
    plan = json.loads(task_s3.get_object(Bucket=bucket, Key=f"run={run_id}/plan.json")["Body"].read())
    assert plan["shards"] == 2
    for shard in (0, 1):
        key = f"run={run_id}/shards/pass1/{shard:05d}/partial.json"
        task_s3.put_object(Bucket=bucket, Key=key, Body=b'{"rows": 1}', IfNoneMatch="*")
        assert task_s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b'{"rows": 1}'

    def event(step: str, shard: int, exit_code: int, attempt: int = 1) -> dict[str, Any]:
        arn = record(step, shard, attempt)["task_arn"]
        task = stack.client("admin", "ecs").describe_tasks(cluster=stack.outputs["cluster_name"], tasks=[arn])
        (found,) = task["tasks"]
        return {
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "detail": {
                "clusterArn": found["clusterArn"],
                "taskArn": arn,
                "lastStatus": "STOPPED",
                "stopCode": "EssentialContainerExited",
                "containers": [{"name": "q4", "exitCode": exit_code, "lastStatus": "STOPPED"}],
                "overrides": found["overrides"],
            },
        }

    assert run_orchestrator(stack, event("pass1", 1, 0), tmp_path) == {"outcome": "advanced"}
    assert run_orchestrator(stack, event("pass2", 0, 1), tmp_path) == {"outcome": "relaunched"}
    assert record("pass2", 1)["task_arn"] and record("pass2", 0, 2)["task_arn"]

    # pass 2's shard 1 fails the run (its ERROR.json) and exits 2: the orchestrator reads ERROR.json and stops
    # the run's tasks that may still run (StopTask on this cluster's tasks) with its role
    error = {"schema": "q4.error/v1", "run_id": run_id, "status": "failed", "code": "malformed_csv",
             "message": "Row 3 is not CSV.", "details": {"shard": 1, "shard_step": "pass2"}}  # fmt: skip
    admin_s3.put_object(Bucket=bucket, Key=f"run={run_id}/ERROR.json", Body=json.dumps(error).encode())
    assert run_orchestrator(stack, event("pass2", 1, 2), tmp_path) == {"outcome": "reported"}
    admin_ecs = stack.client("admin", "ecs")
    arns = [record("pass2", 0, 2)["task_arn"], record("pass2", 1)["task_arn"]]
    described = admin_ecs.describe_tasks(cluster=stack.outputs["cluster_name"], tasks=arns)["tasks"]
    reasons = {t["taskArn"]: (t["desiredStatus"], t.get("stoppedReason")) for t in described}
    assert reasons[arns[0]] == ("STOPPED", "Run failed: malformed_csv")
    assert reasons[arns[1]][0] != "STOPPED"  # the step that failed the run: its stop is recorded


# ---------------------------------------------------------------- and is denied the rest


def _denied(
    stack: EnforcingStack, principal: str, service: str, call: Callable[[Any, dict[str, Any]], Any]
) -> None:
    client = stack.client(principal, service)
    with pytest.raises(ClientError) as excinfo:
        call(client, stack.outputs)
    assert is_denied(excinfo.value), excinfo.value.response


#: (what, service, call): calls the task role must not make. "Another run's outputs": the role is shared by
#: every run, so "other" means every run's data outputs (output/, viz/) and the orchestrator's records; a
#: task reads only the run state documents and saved models (see docs/reliability.md).
TASK_DENIED = [
    ("write the archive (an input)", "s3",
     lambda c, o: c.put_object(Bucket=o["archive_bucket"], Key="run=sec-1/input/evil.csv", Body=b"a\n1\n")),
    ("delete an input", "s3",
     lambda c, o: c.delete_object(Bucket=o["archive_bucket"], Key="run=sec-1/input/data.csv")),
    ("read the archive outside run inputs", "s3",
     lambda c, o: c.get_object(Bucket=o["archive_bucket"], Key="run=sec-1/notes.txt")),
    ("read another run's outputs", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/output/Q_keep.csv")),
    ("read another run's energy split", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/output/er.json")),
    ("read the orchestrator's launch records", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/attempts/1.json")),
    ("overwrite a run's accepted job", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="run=sec-3/job.json", Body=b"{}")),
    ("forge a launch record", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="run=sec-3/attempts/9.json", Body=b"{}")),
    ("write outside run prefixes", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="index.html", Body=b"x")),
    ("forge a sharded run's plan", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="run=sec-3/plan.json", Body=b"{}")),
    ("forge a step's launch record", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"],
                               Key="run=sec-3/shards/pass1/00000/attempts/9.json", Body=b"{}")),
    ("read a step's launch record", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"],
                               Key="run=sec-shards/shards/pass1/00000/attempts/1.json")),
    ("delete artifacts", "s3",
     lambda c, o: c.delete_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/MANIFEST.json")),
    ("send to the work queue", "sqs",
     lambda c, o: c.send_message(QueueUrl=o["work_queue_url"], MessageBody="{}")),
    ("receive from the work queue", "sqs",
     lambda c, o: c.receive_message(QueueUrl=o["work_queue_url"])),
    ("read the done queue", "sqs",
     lambda c, o: c.receive_message(QueueUrl=o["done_queue_url"])),
    ("launch tasks", "ecs",
     lambda c, o: c.run_task(cluster=o["cluster_name"], taskDefinition=o["task_definition_arn"],
                             launchType="FARGATE")),
]  # fmt: skip

#: Calls the orchestrator role must not make: it decides on listings and run records, never reads data.
ORCHESTRATOR_DENIED = [
    ("read an input", "s3",
     lambda c, o: c.get_object(Bucket=o["archive_bucket"], Key="run=sec-1/input/data.csv")),
    ("write the archive", "s3",
     lambda c, o: c.put_object(Bucket=o["archive_bucket"], Key="run=sec-1/input/evil.csv", Body=b"a\n1\n")),
    ("read a run's outputs", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/output/Q_keep.csv")),
    ("read a saved model", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"], Key=MODEL_KEY)),
    ("write a run's outputs", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="run=sec-3/output/Q_keep.csv", Body=b"x")),
    ("forge a MANIFEST.json", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"], Key="run=sec-3/MANIFEST.json", Body=b"{}")),
    ("read a step's partial", "s3",
     lambda c, o: c.get_object(Bucket=o["artifacts_bucket"],
                               Key="run=sec-shards/shards/pass1/00000/partial.json")),
    ("forge a step's partial", "s3",
     lambda c, o: c.put_object(Bucket=o["artifacts_bucket"],
                               Key="run=sec-3/shards/pass1/00000/partial.json", Body=b"{}")),
    ("delete artifacts", "s3",
     lambda c, o: c.delete_object(Bucket=o["artifacts_bucket"], Key="run=sec-1/MANIFEST.json")),
    ("send to the work queue", "sqs",
     lambda c, o: c.send_message(QueueUrl=o["work_queue_url"], MessageBody="{}")),
    ("read the done queue", "sqs",
     lambda c, o: c.receive_message(QueueUrl=o["done_queue_url"])),
    ("describe another cluster's tasks", "ecs",
     lambda c, o: c.describe_tasks(cluster="other", tasks=[
         f"arn:aws:ecs:us-east-1:{o['work_queue_url'].split('/')[-2]}:task/other/0a1b"])),
    ("describe tasks by bare id", "ecs",
     lambda c, o: c.describe_tasks(cluster=o["cluster_name"], tasks=["0a1b"])),
    ("stop another cluster's tasks", "ecs",
     lambda c, o: c.stop_task(cluster="other", task=(
         f"arn:aws:ecs:us-east-1:{o['work_queue_url'].split('/')[-2]}:task/other/0a1b"))),
]  # fmt: skip


@pytest.mark.parametrize(("what", "service", "call"), TASK_DENIED, ids=[t[0] for t in TASK_DENIED])
def test_task_role_is_denied(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any], what: str, service: str, call: Any
) -> None:
    _denied(enforcing_stack, "task", service, call)


@pytest.mark.parametrize(
    ("what", "service", "call"), ORCHESTRATOR_DENIED, ids=[t[0] for t in ORCHESTRATOR_DENIED]
)
def test_orchestrator_role_is_denied(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any], what: str, service: str, call: Any
) -> None:
    _denied(enforcing_stack, "orchestrator", service, call)


def test_denied_objects_exist(enforcing_stack: EnforcingStack, pipeline: dict[str, Any]) -> None:
    """The objects the denials name are there (so a denial is not a 403 for a missing key)."""
    admin = enforcing_stack.client("admin", "s3")
    artifacts = enforcing_stack.outputs["artifacts_bucket"]
    for key in (
        "run=sec-1/output/Q_keep.csv",
        "run=sec-1/output/er.json",
        "run=sec-1/attempts/1.json",
        MODEL_KEY,
    ):
        admin.head_object(Bucket=artifacts, Key=key)
    for key in ("run=sec-1/input/data.csv", "run=sec-1/notes.txt"):
        admin.head_object(Bucket=enforcing_stack.outputs["archive_bucket"], Key=key)


# ---------------------------------------------------------------- what the emulator cannot enforce


def _statements(stack: EnforcingStack, principal: str) -> list[dict[str, Any]]:
    iam = stack.client("admin", "iam")
    role = stack.roles[principal].rsplit("/", 1)[1]
    (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


@pytest.mark.parametrize("principal", ["task", "orchestrator"])
def test_listings_are_limited_by_prefix_conditions(enforcing_stack: EnforcingStack, principal: str) -> None:
    """moto ignores policy conditions (the task could list the whole archive there), so the deployed
    documents are checked instead: every s3:ListBucket is bound to run prefixes (inputs in the archive)."""
    archive = f"arn:aws:s3:::{enforcing_stack.outputs['archive_bucket']}"
    listings = [s for s in _statements(enforcing_stack, principal) if "s3:ListBucket" in str(s["Action"])]
    assert listings
    for statement in listings:
        expected = "run=*/input/*" if statement["Resource"] == archive else "run=*"
        assert statement["Condition"] == {"StringLike": {"s3:prefix": expected}}, statement
    if principal == "orchestrator":
        (launch,) = [s for s in _statements(enforcing_stack, principal) if "ecs:RunTask" in str(s["Action"])]
        assert set(launch["Condition"]) == {"ArnEquals"}


def test_a_model_key_the_task_may_not_read_is_rejected_before_launch(
    enforcing_stack: EnforcingStack, pipeline: dict[str, Any]
) -> None:
    # The task role may read models only under run=*/model/q4_model.json, so the contract refuses any
    # other model_key at once instead of launching a task that would be denied.
    (done,) = pipeline["done"].get("sec-4", [])
    assert done["status"] == "rejected"
    assert done["error"]["code"] == "invalid_model_key"
