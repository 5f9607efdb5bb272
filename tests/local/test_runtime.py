"""The local runtime against resources created directly in the moto server (no terraform).

A toy function (its own zip, boto3 from the runtime) launches a task per work message and
reports each STOPPED event to an "events" queue (and fails on those of a task that exited 99); the
task definition's command is a small Python program whose exit code comes from the container overrides.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from q4_local import lambda_host
from q4_local.fargate import Container, Launch, task_launch
from q4_local.ledger import TaskRecord
from q4_local.runtime import LocalRuntime, RuntimeConfig
from support import toy_task

HANDLER = """
import json, os
import boto3

def handler(event, context):
    if "Records" in event:
        failures = []
        ecs = boto3.client("ecs")
        for record in event["Records"]:
            body = json.loads(record["body"])
            if body.get("fail"):
                failures.append({"itemIdentifier": record["messageId"]})
                continue
            ecs.run_task(
                cluster=os.environ["CLUSTER"], taskDefinition=os.environ["TASK_DEFINITION"],
                launchType="FARGATE", startedBy="toy",
                networkConfiguration={"awsvpcConfiguration": {
                    "subnets": os.environ["SUBNETS"].split(","),
                    "securityGroups": os.environ["SECURITY_GROUPS"].split(","), "assignPublicIp": "ENABLED"}},
                overrides={"containerOverrides": [{"name": "app", "environment": [
                    {"name": "EXIT", "value": str(body["exit"])},
                    {"name": "SLEEP", "value": str(body.get("sleep", 0))}]}]},
            )
        return {"batchItemFailures": failures}
    if [c.get("exitCode") for c in event.get("detail", {}).get("containers", [])] == [99]:
        raise RuntimeError("cannot relaunch")
    boto3.client("sqs").send_message(QueueUrl=os.environ["EVENTS_QUEUE"], MessageBody=json.dumps(event))
    return {"ok": True, "has_q4": _has_q4()}

def _has_q4():
    try:
        import q4  # noqa: F401 - the q4 package must not be on the Lambda path
    except ImportError:
        return False
    return True
"""

TASK_PROGRAM = (
    "import os, pathlib, sys, time; time.sleep(float(os.environ['SLEEP'])); "
    "pathlib.Path(os.environ['Q4_SCRATCH_DIR'], 'seen.txt').write_text(os.environ['Q4_TASK_ARN'] + ' ' + "
    "os.environ['STATIC'] + ' ' + os.getcwd()); "
    "sys.exit(int(os.environ['EXIT']))"
)


def _zip(tmp_path: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("toy.py", HANDLER)
    path = tmp_path / "toy.zip"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def toy_deployment(aws_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """Queues (work + DLQ with maxReceiveCount 2, events), a function with an SQS mapping, a cluster,
    a task definition and an EventBridge rule for its STOPPED tasks."""
    suffix = str(time.monotonic_ns())
    sqs, lam, ecs, events, iam, ec2 = (
        boto3.client(s) for s in ("sqs", "lambda", "ecs", "events", "iam", "ec2")
    )
    dlq = sqs.create_queue(QueueName=f"toy-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    work = sqs.create_queue(
        QueueName=f"toy-work-{suffix}",
        Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
        },
    )["QueueUrl"]
    work_arn = sqs.get_queue_attributes(QueueUrl=work, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events_queue = sqs.create_queue(QueueName=f"toy-events-{suffix}")["QueueUrl"]
    cluster_arn = ecs.create_cluster(clusterName=f"toy-{suffix}")["cluster"]["clusterArn"]
    task_def = toy_task.register(
        TASK_PROGRAM, "toy", environment=[{"name": "STATIC", "value": "from-task-definition"}]
    )
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    role = iam.create_role(
        RoleName=f"toy-{suffix}",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    zip_path = _zip(tmp_path)
    function = lam.create_function(
        FunctionName=f"toy-{suffix}",
        Runtime="python3.12",
        Role=role,
        Handler="toy.handler",
        Code={"ZipFile": zip_path.read_bytes()},
        Timeout=30,
        Environment={
            "Variables": {
                "CLUSTER": cluster_arn,
                "TASK_DEFINITION": task_def,
                "SUBNETS": subnet,
                "SECURITY_GROUPS": group,
                "EVENTS_QUEUE": events_queue,
            }
        },
    )
    lam.create_event_source_mapping(
        EventSourceArn=work_arn,
        FunctionName=function["FunctionName"],
        BatchSize=5,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    rule = f"toy-stopped-{suffix}"
    events.put_rule(
        Name=rule,
        EventPattern=json.dumps(
            {
                "source": ["aws.ecs"],
                "detail-type": ["ECS Task State Change"],
                "detail": {"clusterArn": [cluster_arn], "lastStatus": ["STOPPED"]},
            }
        ),
    )
    events.put_targets(Rule=rule, Targets=[{"Id": "fn", "Arn": function["FunctionArn"]}])
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = RuntimeConfig(
        state_dir=state_dir,
        aws_env=dict(aws_env),
        function_name=function["FunctionName"],
        cluster=f"toy-{suffix}",
        lambda_zips={function["FunctionName"]: zip_path},
    )
    return {"config": config, "work": work, "dlq": dlq, "events": events_queue, "cluster": cluster_arn}


def _until(runtime: LocalRuntime, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime.tick()
        value = condition()
        if value:
            return value
    raise AssertionError("condition not met in time")


def _events(queue_url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return [json.loads(message["Body"]) for message in messages]


def test_message_runs_a_task_whose_real_exit_code_reaches_the_rule_target(toy_deployment):
    # GIVEN the toy deployment and a runtime reading it
    deployment = toy_deployment
    runtime = LocalRuntime(deployment["config"])
    assert runtime.mappings[0].batch_size == 5 and runtime.mappings[0].report_batch_item_failures
    # WHEN a work message asks for a task exiting with 3
    boto3.client("sqs").send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 3}))
    received: list[dict[str, Any]] = []
    _until(runtime, lambda: received.extend(_events(deployment["events"])) or received)
    # THEN the rule's target got an ECS Task State Change with exit code 3 and the task's ARN
    event = received[0]
    assert event["detail-type"] == "ECS Task State Change" and event["source"] == "aws.ecs"
    assert event["detail"]["lastStatus"] == "STOPPED"
    assert event["detail"]["clusterArn"] == deployment["cluster"]
    assert event["detail"]["containers"][0]["exitCode"] == 3
    task_arn = event["detail"]["taskArn"]
    # AND the task ran with the definition's env, the overrides, its ARN, in its scratch dir
    scratch = deployment["config"].state_dir / "tasks" / task_arn.rsplit("/", 1)[-1] / "scratch"
    seen = (scratch / "seen.txt").read_text().split(" ")
    assert seen == [task_arn, "from-task-definition", str(scratch)]
    # AND the task metadata endpoint (as files) gives its ARN and size, as the ECS agent does on Fargate
    metadata = json.loads((scratch.parent / "metadata" / "task").read_text())
    assert metadata["TaskARN"] == task_arn and metadata["Limits"] == {"CPU": 0.25, "Memory": 512}
    # AND the emulator shows the task stopped, the work message is gone, and nothing was rerun
    task = boto3.client("ecs").describe_tasks(cluster=deployment["cluster"], tasks=[task_arn])["tasks"][0]
    assert task["desiredStatus"] == "STOPPED"
    ledger = json.loads((deployment["config"].state_dir / "ledger.json").read_text())
    assert [entry["status"] for entry in ledger.values()] == ["delivered"]
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=deployment["work"], AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_launcher_given_to_the_runtime_decides_how_tasks_run(toy_deployment):
    # GIVEN a runtime whose launcher starts each task as task_launch says, with one variable changed
    deployment = toy_deployment

    def launcher(record: TaskRecord, container: Container, task_dir: Path, env: dict[str, str]) -> Launch:
        launch = task_launch(record, container, task_dir, env)
        return Launch(launch.argv, {**launch.env, "STATIC": "from-the-launcher"}, launch.cwd)

    runtime = LocalRuntime(deployment["config"], launcher=launcher)
    # WHEN a work message asks for a task exiting with 4
    boto3.client("sqs").send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 4}))
    received: list[dict[str, Any]] = []
    _until(runtime, lambda: received.extend(_events(deployment["events"])) or received)
    # THEN the task ran with the launcher's environment, and the rest (exit code, event) is unchanged
    assert [event["detail"]["containers"][0]["exitCode"] for event in received] == [4]
    task_arn = received[0]["detail"]["taskArn"]
    scratch = deployment["config"].state_dir / "tasks" / task_arn.rsplit("/", 1)[-1] / "scratch"
    assert (scratch / "seen.txt").read_text().split(" ") == [task_arn, "from-the-launcher", str(scratch)]


def test_task_launch_maps_mount_points_to_the_scratch_dir_and_keeps_the_callers_env_out(
    tmp_path, monkeypatch
):
    # GIVEN a container with a scratch volume, a variable pointing into it and an override; a caller's secret
    monkeypatch.setenv("CALLERS_SECRET", "must-not-leak")
    task_arn = "arn:aws:ecs:us-east-1:123456789012:task/c/0123abcd"
    container = Container(
        task={"taskArn": task_arn, "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/c"},
        definition={"family": "q4", "revision": 7, "cpu": "2048", "memory": "4096"},
        container={
            "name": "q4",
            "image": "q4:latest",
            "entryPoint": ["q4-task"],
            "command": ["--from-definition"],
            "environment": [{"name": "OUT", "value": "/scratch/out"}, {"name": "KEEP", "value": "/scratchy"}],
            "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch"}],
        },
        override={"command": ["--overridden"], "environment": [{"name": "MODE", "value": "full"}]},
    )
    # WHEN its launch is built
    launch = task_launch(
        TaskRecord(task_arn=task_arn, status="pending"), container, tmp_path, {"AWS_REGION": "r"}
    )
    # THEN entry point + the override's command, in the scratch dir, which the mount path maps to
    scratch = tmp_path / "scratch"
    assert launch.argv == ["q4-task", "--overridden"] and launch.cwd == scratch and scratch.is_dir()
    assert (launch.env["OUT"], launch.env["KEEP"], launch.env["MODE"]) == (
        f"{scratch}/out",
        "/scratchy",
        "full",
    )
    assert (launch.env["Q4_TASK_ARN"], launch.env["Q4_SCRATCH_DIR"], launch.env["AWS_REGION"]) == (
        task_arn,
        str(scratch),
        "r",
    )
    assert "CALLERS_SECRET" not in launch.env
    # AND the task metadata endpoint, as files, gives the task's ARN and size
    metadata = json.loads((tmp_path / "metadata" / "task").read_text())
    assert launch.env["ECS_CONTAINER_METADATA_URI_V4"] == (tmp_path / "metadata").as_uri()
    assert (metadata["TaskARN"], metadata["Revision"], metadata["Limits"]) == (
        task_arn,
        "7",
        {"CPU": 2.0, "Memory": 4096},
    )


def test_restarted_runtime_neither_reruns_nor_loses_tasks(toy_deployment):
    deployment = toy_deployment
    first = LocalRuntime(deployment["config"])
    boto3.client("sqs").send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 0}))
    received: list[dict[str, Any]] = []
    _until(first, lambda: received.extend(_events(deployment["events"])) or received)
    # WHEN a second runtime starts on the same state dir and runs a while
    second = LocalRuntime(deployment["config"])
    for _ in range(3):
        second.tick()
    # THEN it delivered nothing again and started no task
    assert _events(deployment["events"]) == []
    assert second.processes == {}
    assert len(second.ledger.tasks) == 1


def test_partial_batch_failure_is_retried_then_dead_lettered(toy_deployment):
    deployment = toy_deployment
    runtime = LocalRuntime(deployment["config"])
    sqs = boto3.client("sqs")
    # WHEN one message of a batch fails in the function (maxReceiveCount 2, visibility 1 s)
    sqs.send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"fail": True}))

    def dead_lettered() -> list[dict[str, Any]]:
        return sqs.receive_message(QueueUrl=deployment["dlq"], AttributeNames=["All"]).get("Messages", [])

    # THEN it is received twice (once per visibility timeout) and then lands in the DLQ, not lost, not deleted
    moved = _until(runtime, dead_lettered, timeout=20)
    assert json.loads(moved[0]["Body"]) == {"fail": True}
    assert moved[0]["Attributes"]["ApproximateReceiveCount"] in ("2", "3")


def test_function_runs_without_the_q4_package_on_its_path(toy_deployment, tmp_path):
    deployment = toy_deployment
    runtime = LocalRuntime(deployment["config"])
    outcome = lambda_host.invoke(
        runtime.function,
        {"detail-type": "probe"},
        deployment["config"].aws_env,
        runtime_dir=runtime.runtime_dir,
        log_path=tmp_path / "invoke.log",
    )
    assert outcome.ok, outcome.error
    assert outcome.result == {"ok": True, "has_q4": False}


def test_moto_does_not_consume_work_messages_itself(toy_deployment):
    # moto's own SQS->Lambda poller is switched off by q4_local.moto_launcher: a sent message is untouched.
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=toy_deployment["work"], MessageBody="{}")
    message = sqs.receive_message(QueueUrl=toy_deployment["work"], AttributeNames=["All"])["Messages"][0]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"


def test_moto_returns_a_queues_redrive_allow_policy(aws_env):
    # Terraform's aws_sqs_queue_redrive_allow_policy waits until the policy reads back.
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"allow-{time.monotonic_ns()}")["QueueUrl"]
    assert (
        "RedriveAllowPolicy"
        not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    )
    policy = json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": ["arn:aws:sqs:us-east-1:1:q"]})
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedriveAllowPolicy": policy})
    named = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedriveAllowPolicy"])["Attributes"]
    assert json.loads(named["RedriveAllowPolicy"]) == json.loads(policy)


def test_tls_only_bucket_policy_allows_loopback_requests_and_still_denies(aws_env):
    # The buckets' DenyInsecureTransport statement, as deployed, must not deny requests to the local emulator,
    # while an unconditional Deny still denies (the policy is evaluated, not ignored).
    s3 = boto3.client("s3")
    bucket = f"tls-only-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket)
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    }
    tls_only = {
        **statement,
        "Sid": "DenyInsecureTransport",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [tls_only]}))
    s3.put_object(Bucket=bucket, Key="run=a/input/x.csv", Body=b"a\n1\n")
    s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    )
    with pytest.raises(s3.exceptions.ClientError):
        s3.put_object(Bucket=bucket, Key="run=a/input/y.csv", Body=b"a\n1\n")


def test_restarted_runtime_adopts_a_running_task_and_reports_its_exit_code(toy_deployment):
    deployment = toy_deployment
    # GIVEN a runtime that started a 2-second task exiting 5, then died without stopping it
    first = LocalRuntime(deployment["config"])
    boto3.client("sqs").send_message(
        QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 5, "sleep": 2})
    )
    _until(first, lambda: first.processes)
    # (the first runtime is never ticked again: as if it had been killed)
    # WHEN a new runtime takes over the same state dir
    second = LocalRuntime(deployment["config"])
    received: list[dict[str, Any]] = []
    _until(second, lambda: received.extend(_events(deployment["events"])) or received)
    # THEN the task was not started again, and its real exit code reached the rule target
    assert second.processes == {}
    assert [event["detail"]["containers"][0]["exitCode"] for event in received] == [5]
    assert [rec.status for rec in second.ledger.tasks.values()] == ["delivered"]
    for process in first.processes.values():  # reap the orphan in this test process
        process.wait()


def test_at_most_max_tasks_run_at_once_and_the_rest_wait(toy_deployment):
    deployment = toy_deployment
    runtime = LocalRuntime(deployment["config"])  # max_tasks = 2
    sqs = boto3.client("sqs")
    for _ in range(3):
        sqs.send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 0, "sleep": 1.5}))
    received: list[dict[str, Any]] = []
    peak = 0

    def all_delivered() -> bool:
        nonlocal peak
        peak = max(peak, sum(1 for process in runtime.processes.values() if process.poll() is None))
        received.extend(_events(deployment["events"]))
        return len(received) == 3

    _until(runtime, all_delivered, timeout=40)
    assert peak == 2
    intervals = sorted((rec.started_at, rec.stopped_at) for rec in runtime.ledger.tasks.values())
    assert intervals[2][0] >= min(intervals[0][1], intervals[1][1])  # the third waited for a free slot


def test_moto_keeps_a_functions_dead_letter_config(aws_env, tmp_path):
    # moto 5.2.5 dropped DeadLetterConfig; q4_local.moto_launcher keeps it, so Terraform's dead_letter_config
    # reads back and the runtime knows where a failed asynchronous event goes.
    lam, iam = boto3.client("lambda"), boto3.client("iam")
    suffix = str(time.monotonic_ns())
    trust = {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "x"}}]}
    role = iam.create_role(RoleName=f"dlc-{suffix}", AssumeRolePolicyDocument=json.dumps(trust))
    role_arn = role["Role"]["Arn"]
    first, second = (f"arn:aws:sqs:us-east-1:123456789012:dlc-{n}-{suffix}" for n in (1, 2))
    created = lam.create_function(
        FunctionName=f"dlc-{suffix}",
        Runtime="python3.12",
        Role=role_arn,
        Handler="toy.handler",
        Code={"ZipFile": _zip(tmp_path).read_bytes()},
        DeadLetterConfig={"TargetArn": first},
    )
    name = created["FunctionName"]
    assert created["DeadLetterConfig"] == {"TargetArn": first}
    assert lam.get_function_configuration(FunctionName=name)["DeadLetterConfig"] == {"TargetArn": first}
    assert lam.get_function(FunctionName=name)["Configuration"]["DeadLetterConfig"] == {"TargetArn": first}
    # an update replaces it, an update without it keeps it, an empty TargetArn removes it (as on Lambda)
    lam.update_function_configuration(FunctionName=name, DeadLetterConfig={"TargetArn": second})
    lam.update_function_configuration(FunctionName=name, Timeout=5)
    assert lam.get_function_configuration(FunctionName=name)["DeadLetterConfig"] == {"TargetArn": second}
    lam.update_function_configuration(FunctionName=name, DeadLetterConfig={"TargetArn": ""})
    assert "DeadLetterConfig" not in lam.get_function_configuration(FunctionName=name)


def _fail_stopped_events(deployment: dict[str, Any], dead_letter_arn: str | None) -> LocalRuntime:
    """Give the toy function ``dead_letter_arn`` as its DLQ (none when None), run a task exiting 99 (whose
    STOPPED event the function fails every time) and tick until the event's last delivery has failed."""
    config = deployment["config"]
    boto3.client("lambda").update_function_configuration(
        FunctionName=config.function_name, DeadLetterConfig={"TargetArn": dead_letter_arn or ""}
    )
    runtime = LocalRuntime(config)
    earlier = set(runtime.ledger.tasks)
    boto3.client("sqs").send_message(QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 99}))
    _until(
        runtime,
        lambda: [
            r
            for arn, r in runtime.ledger.tasks.items()
            if arn not in earlier and r.status not in ("pending", "running", "exited")
        ],
        timeout=60,
    )
    return runtime


def _queue_arn(url: str) -> str:
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def test_stopped_event_that_fails_every_delivery_goes_to_the_functions_dlq(toy_deployment):
    # GIVEN a function whose DeadLetterConfig names the DLQ, and a task whose STOPPED event it always fails
    deployment = toy_deployment
    dlq_arn = _queue_arn(deployment["dlq"])
    runtime = _fail_stopped_events(deployment, dlq_arn)
    # THEN after its 3 attempts the event is in the DLQ, as Lambda sends a failed asynchronous event
    [record] = runtime.ledger.tasks.values()
    assert (record.status, record.delivery_attempts, record.exit_code) == ("dead_lettered", 3, 99)
    messages = boto3.client("sqs").receive_message(
        QueueUrl=deployment["dlq"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    [message] = messages
    event = json.loads(message["Body"])  # the event itself, unchanged
    assert event["detail-type"] == "ECS Task State Change"
    assert event["detail"]["taskArn"] == record.task_arn
    assert event["detail"]["containers"][0]["exitCode"] == 99
    attributes = message["MessageAttributes"]
    assert attributes["ErrorCode"] == {"DataType": "Number", "StringValue": "200"}
    assert attributes["ErrorMessage"] == {"DataType": "String", "StringValue": "cannot relaunch"}
    assert attributes["RequestID"]["DataType"] == "String"
    # AND the ledger says where it went
    assert record.dead_letters == [
        {
            "function": runtime.function.arn,
            "queue": dlq_arn,
            "message_id": message["MessageId"],
            "request_id": attributes["RequestID"]["StringValue"],
        }
    ]
    saved = json.loads((deployment["config"].state_dir / "ledger.json").read_text())[record.task_arn]
    assert saved["status"] == "dead_lettered" and saved["dead_letters"] == record.dead_letters
    assert _events(deployment["events"]) == []


def test_stopped_event_is_dropped_without_a_dlq_and_kept_undeliverable_when_the_dlq_fails(
    toy_deployment, caplog
):
    deployment = toy_deployment
    sqs = boto3.client("sqs")
    # GIVEN a function without a DLQ: after 3 failed attempts the event is dropped (and logged), as on Lambda
    caplog.set_level("WARNING", logger="q4_local.runtime")
    runtime = _fail_stopped_events(deployment, None)
    [record] = runtime.ledger.tasks.values()
    assert (record.status, record.delivery_attempts, record.dead_letters) == ("undeliverable", 3, [])
    assert "the function has no dead-letter queue" in caplog.text
    assert sqs.receive_message(QueueUrl=deployment["dlq"]).get("Messages", []) == []
    # GIVEN a DLQ that cannot take the message (the queue does not exist)
    missing = _queue_arn(deployment["dlq"]) + "-gone"
    with pytest.raises(ClientError):
        sqs.get_queue_url(QueueName=missing.rsplit(":", 1)[-1])
    caplog.clear()
    runtime = _fail_stopped_events(deployment, missing)
    # THEN the send failure is logged and the ledger keeps the task undeliverable
    second = [r for r in runtime.ledger.tasks.values() if r.task_arn != record.task_arn]
    assert [(r.status, r.delivery_attempts, r.dead_letters) for r in second] == [("undeliverable", 3, [])]
    assert f"could NOT be sent to its dead-letter queue {missing}" in caplog.text


def _group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _pgid(proc) == pgid:
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                members.append(proc.name)
    return members


def test_a_task_whose_main_process_dies_is_stopped_as_a_whole(toy_deployment):
    deployment = toy_deployment
    # GIVEN a running 60-second task (the /bin/sh exit-code wrapper and, under it, the task's program)
    runtime = LocalRuntime(deployment["config"])
    boto3.client("sqs").send_message(
        QueueUrl=deployment["work"], MessageBody=json.dumps({"exit": 0, "sleep": 60})
    )
    (record,) = _until(runtime, lambda: [r for r in runtime.ledger.tasks.values() if r.status == "running"])
    pgid = record.pid
    _until(runtime, lambda: len(_group_members(pgid)) >= 2)
    # WHEN only the main process is killed (as a user's `kill -9 <pid from runtime.log>` does)
    os.kill(record.pid, signal.SIGKILL)
    received: list[dict[str, Any]] = []
    _until(runtime, lambda: received.extend(_events(deployment["events"])) or received)
    # THEN the task stopped with 137 and nothing of it runs on (no second writer beside a relaunch)
    assert [event["detail"]["containers"][0]["exitCode"] for event in received] == [137]
    assert _group_members(pgid) == []


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None
