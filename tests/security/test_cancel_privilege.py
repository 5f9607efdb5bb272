"""Cancelling a run under IAM enforcement (tests/security/conftest.py): a canceller holding exactly the
permissions docs/infrastructure.md lists ("whoever may cancel") runs `q4 cancel`; the task and the
orchestrator, each with its own role, read the cancel request and end the run `cancelled`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from support.enforcing import EnforcingStack, is_denied

pytestmark = pytest.mark.slow

RUN = "sec-cancel"
HANDLER = """
import json, sys
from q4_orchestrator.handler import lambda_handler
json.dump(lambda_handler(json.load(open(sys.argv[1])), None), open(sys.argv[2], "w"))
"""
BIN = Path(sys.executable).parent


def _canceller_policy(stack: EnforcingStack) -> dict[str, Any]:
    """The canceller's permissions exactly as docs/infrastructure.md lists them."""
    artifacts = f"arn:aws:s3:::{stack.outputs['artifacts_bucket']}"
    archive = f"arn:aws:s3:::{stack.outputs['archive_bucket']}"
    documents = ("job.json", "MANIFEST.json", "ERROR.json", "cancel.json", "attempts/*")
    cluster = stack.outputs["cluster_name"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{artifacts}/run=*/cancel.json"},
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"{artifacts}/run=*/{name}" for name in documents],
            },
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": [artifacts, archive]},
            {
                "Effect": "Allow",
                "Action": ["ecs:DescribeTasks", "ecs:StopTask"],
                "Resource": f"arn:aws:ecs:*:*:task/{cluster}/*",
            },
        ],
    }


def _canceller(stack: EnforcingStack) -> dict[str, str]:
    iam = stack.client("admin", "iam")
    iam.create_user(UserName="q4-canceller")
    iam.put_user_policy(
        UserName="q4-canceller", PolicyName="cancel", PolicyDocument=json.dumps(_canceller_policy(stack))
    )
    key = iam.create_access_key(UserName="q4-canceller")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _orchestrator(stack: EnforcingStack, event: dict[str, Any], tmp: Path) -> dict[str, Any]:
    event_path, result_path = tmp / "event.json", tmp / "result.json"
    event_path.write_text(json.dumps(event))
    env = stack.process_env(
        "orchestrator", {**stack.lambda_env, "POWERTOOLS_SERVICE_NAME": "q4-orchestrator"}
    )
    result = subprocess.run(
        [sys.executable, "-c", HANDLER, str(event_path), str(result_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result_path.read_text()))


def _task(stack: EnforcingStack, task: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    override = task["overrides"]["containerOverrides"][0]
    env = stack.process_env(
        "task",
        {
            **stack.task_env,
            **{item["name"]: item["value"] for item in override.get("environment", [])},
            "Q4_TASK_ARN": task["taskArn"],
            "Q4_SCRATCH_DIR": str(tmp),
        },
    )
    return subprocess.run(
        [str(BIN / "q4-task")], env=env, cwd=tmp, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_canceller_with_the_documented_permissions_cancels_a_running_run(
    enforcing_stack: EnforcingStack, tmp_path: Path
) -> None:
    from q4_local.event_source import sqs_record

    stack = enforcing_stack
    out = stack.outputs
    admin_s3, admin_sqs, admin_ecs = (stack.client("admin", s) for s in ("s3", "sqs", "ecs"))
    # GIVEN a run the orchestrator (its own role) accepted and launched
    key = f"run={RUN}/input/data.csv"
    admin_s3.put_object(Bucket=out["archive_bucket"], Key=key, Body=b"a,b,c\n1,2,3\n4,5,7\n8,1,2\n")
    queue_arn = admin_sqs.get_queue_attributes(QueueUrl=out["work_queue_url"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    body = json.dumps({"run_id": RUN, "input_key": key})
    message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": body, "Attributes": {}}
    batch = _orchestrator(stack, {"Records": [sqs_record(message, queue_arn, "us-east-1")]}, tmp_path)
    assert batch.get("batchItemFailures") == []
    record = json.loads(
        admin_s3.get_object(Bucket=out["artifacts_bucket"], Key=f"run={RUN}/attempts/1.json")["Body"].read()
    )
    (task,) = admin_ecs.describe_tasks(cluster=out["cluster_name"], tasks=[record["task_arn"]])["tasks"]
    # WHEN a canceller holding only the documented permissions runs `q4 cancel`
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": stack.endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        **_canceller(stack),
        "Q4_ARCHIVE_BUCKET": out["archive_bucket"],
        "Q4_ARTIFACTS_BUCKET": out["artifacts_bucket"],
        "Q4_WORK_QUEUE_URL": out["work_queue_url"],
        "Q4_DONE_QUEUE_URL": out["done_queue_url"],
    }
    cancel = subprocess.run(
        [str(BIN / "q4"), "cancel", RUN, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # THEN the request is written and the task stopped
    assert cancel.returncode == 0, cancel.stderr
    assert [t["task_arn"] for t in json.loads(cancel.stdout)["stopped_tasks"]] == [task["taskArn"]]
    # AND the task (its role) reads the request and commits nothing
    ran = _task(stack, task, tmp_path)
    assert ran.returncode == 143, ran.stdout[-3000:]
    assert "The run has a cancel request" in ran.stdout and "access_denied" not in ran.stdout
    # AND the orchestrator (its role) ends the run cancelled on the STOPPED event
    detail = {
        "clusterArn": task["clusterArn"], "taskArn": task["taskArn"], "lastStatus": "STOPPED",
        "stopCode": "UserInitiated", "stoppedReason": "Cancelled by q4 cancel",
        "overrides": task["overrides"],
        "containers": [{"name": "q4", "exitCode": 143, "lastStatus": "STOPPED"}],
    }  # fmt: skip
    event = {"source": "aws.ecs", "detail-type": "ECS Task State Change", "detail": detail}
    assert _orchestrator(stack, event, tmp_path) == {"outcome": "cancelled"}
    error = json.loads(
        admin_s3.get_object(Bucket=out["artifacts_bucket"], Key=f"run={RUN}/ERROR.json")["Body"].read()
    )
    assert error["code"] == "cancelled"
    # AND the canceller may write nothing else of the run
    s3 = boto3.client(
        "s3", endpoint_url=stack.endpoint_url, region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=out["artifacts_bucket"], Key=f"run={RUN}/ERROR.json", Body=b"{}")
    assert is_denied(denied.value)
