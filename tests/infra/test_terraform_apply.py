"""One real deployment (scripts/deploy.sh: terraform apply) to moto server, checked through boto3."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from q4_deploy import lambda_zip
from q4_local import emulator

pytestmark = pytest.mark.slow

CONTRACT_OUTPUTS = {  # docs/contract.md, Infrastructure
    "archive_bucket",
    "artifacts_bucket",
    "work_queue_url",
    "done_queue_url",
    "dlq_url",
    "cluster_name",
    "task_definition_arn",
    "ecr_repository_url",
    "orchestrator_function_name",
}
DOCKERFILE = Path(__file__).resolve().parents[2] / "fargate" / "Dockerfile"


@pytest.fixture(scope="module")
def outputs(deployed_stack: dict[str, Any]) -> dict[str, Any]:
    return dict(deployed_stack["outputs"])


@pytest.fixture(scope="module")
def variables(deployed_stack: dict[str, Any]) -> dict[str, Any]:
    return dict(deployed_stack["variables"])


@pytest.fixture(scope="module")
def aws(private_emulator: emulator.Emulator) -> Any:
    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=private_emulator.endpoint_url,
            region_name=emulator.REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    return client


def _policy_statements(document: str | dict[str, Any]) -> list[dict[str, Any]]:
    doc = json.loads(document) if isinstance(document, str) else document
    statements = doc["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _inline_policy(iam: Any, role: str) -> list[dict[str, Any]]:
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    assert len(names) == 1, f"{role} should carry exactly one inline policy, has {names}"
    return _policy_statements(iam.get_role_policy(RoleName=role, PolicyName=names[0])["PolicyDocument"])


def _by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in statements}


def test_every_spec_output_is_set(outputs: dict[str, Any]) -> None:
    assert outputs.keys() >= CONTRACT_OUTPUTS
    assert all(outputs[name] for name in CONTRACT_OUTPUTS)


@pytest.mark.parametrize("output", ["archive_bucket", "artifacts_bucket"])
def test_buckets_are_private_encrypted_versioned_and_tls_only(
    aws: Any, outputs: dict[str, Any], output: str
) -> None:
    s3 = aws("s3")
    bucket = outputs[output]
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    noncurrent = [r for r in lifecycle if "NoncurrentVersionExpiration" in r]
    assert noncurrent and noncurrent[0]["Status"] == "Enabled"
    assert noncurrent[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30

    (deny,) = _policy_statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(_as_list(deny["Resource"])) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def test_work_queue_redrives_to_dlq_and_outlasts_six_lambda_timeouts(
    aws: Any, outputs: dict[str, Any], variables: dict[str, Any]
) -> None:
    sqs = aws("sqs")
    work = sqs.get_queue_attributes(QueueUrl=outputs["work_queue_url"], AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=outputs["dlq_url"], AttributeNames=["All"])["Attributes"]
    function = aws("lambda").get_function_configuration(FunctionName=outputs["orchestrator_function_name"])

    assert function["Timeout"] == variables["lambda_timeout"]
    assert int(work["VisibilityTimeout"]) >= 6 * function["Timeout"]
    redrive = json.loads(work["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 5
    allowed = json.loads(dlq["RedriveAllowPolicy"])
    assert allowed == {"redrivePermission": "byQueue", "sourceQueueArns": [work["QueueArn"]]}
    for url in (outputs["work_queue_url"], outputs["dlq_url"], outputs["done_queue_url"]):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["SqsManagedSseEnabled"])
        assert attributes["Attributes"]["SqsManagedSseEnabled"] == "true", url


def test_orchestrator_function_configuration(
    aws: Any, outputs: dict[str, Any], deployed_stack: dict[str, Any]
) -> None:
    function = aws("lambda").get_function_configuration(FunctionName=outputs["orchestrator_function_name"])
    assert function["CodeSha256"] == lambda_zip.source_code_hash(deployed_stack["zip"])
    assert function["Handler"] == "q4_orchestrator.handler.lambda_handler"
    assert function["Runtime"] == "python3.12"
    env = function["Environment"]["Variables"]
    assert set(env) == {
        "Q4_ARCHIVE_BUCKET",
        "Q4_ARTIFACTS_BUCKET",
        "Q4_DONE_QUEUE_URL",
        "Q4_CLUSTER",
        "Q4_TASK_DEFINITION",
        "Q4_CONTAINER_NAME",
        "Q4_SUBNETS",
        "Q4_SECURITY_GROUPS",
        "Q4_ASSIGN_PUBLIC_IP",
        "Q4_MAX_ATTEMPTS",
        "Q4_TASK_CPU_MIN",
        "Q4_TASK_CPU_MAX",
        "Q4_TASK_MEMORY_PER_VCPU",
        "Q4_TASK_STORAGE_MIN_GIB",
        "Q4_TASK_STORAGE_MAX_GIB",
        "Q4_TASK_ARCHITECTURE",
        "Q4_SHARD_TARGET_BYTES",
        "Q4_MAX_SHARDS",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_LOG_LEVEL",
    }
    assert env["Q4_ARCHIVE_BUCKET"] == outputs["archive_bucket"]
    assert env["Q4_ARTIFACTS_BUCKET"] == outputs["artifacts_bucket"]
    assert env["Q4_DONE_QUEUE_URL"] == outputs["done_queue_url"]
    assert env["Q4_CLUSTER"] == outputs["cluster_name"]
    assert env["Q4_TASK_DEFINITION"] == outputs["task_definition_arn"]
    assert env["Q4_CONTAINER_NAME"] == "q4"
    assert env["Q4_ASSIGN_PUBLIC_IP"] == "ENABLED"
    assert env["Q4_MAX_ATTEMPTS"] == "3"
    # the task size limits (docs/contract.md, Task size) and the architecture that prices a crashed run
    sizes = ("Q4_TASK_CPU_MIN", "Q4_TASK_CPU_MAX", "Q4_TASK_MEMORY_PER_VCPU")
    sizes += ("Q4_TASK_STORAGE_MIN_GIB", "Q4_TASK_STORAGE_MAX_GIB")
    assert [env[name] for name in sizes] == ["1024", "4096", "4096", "21", "200"]
    assert env["Q4_TASK_ARCHITECTURE"] == "X86_64"
    # the sharding settings (docs/contract.md, Sharded runs): 8 GiB per shard, at most 50
    assert (env["Q4_SHARD_TARGET_BYTES"], env["Q4_MAX_SHARDS"]) == ("8589934592", "50")

    # Networking came from the emulator's default VPC: real subnet and security-group ids RunTask accepts.
    ec2 = aws("ec2")
    subnets = env["Q4_SUBNETS"].split(",")
    described = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
    assert len(described) == len(subnets) >= 1
    (group,) = ec2.describe_security_groups(GroupIds=env["Q4_SECURITY_GROUPS"].split(","))["SecurityGroups"]
    assert group["VpcId"] == described[0]["VpcId"]
    assert group["IpPermissions"] == []
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in group["IpPermissionsEgress"]] == [
        ("tcp", 443, 443)
    ]


def test_work_queue_event_source_mapping_reports_batch_item_failures(
    aws: Any, outputs: dict[str, Any]
) -> None:
    sqs = aws("sqs")
    work_arn = sqs.get_queue_attributes(QueueUrl=outputs["work_queue_url"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    function = aws("lambda").get_function_configuration(FunctionName=outputs["orchestrator_function_name"])
    mappings = aws("lambda").list_event_source_mappings()["EventSourceMappings"]
    (mapping,) = [m for m in mappings if m["FunctionArn"] == function["FunctionArn"]]
    assert mapping["EventSourceArn"] == work_arn
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 10
    assert mapping["State"] == "Disabled", "event_source_mapping_enabled = false must reach the mapping"


def test_stopped_task_events_of_this_cluster_reach_the_orchestrator(
    aws: Any, outputs: dict[str, Any]
) -> None:
    events = aws("events")
    cluster_arn = aws("ecs").describe_clusters(clusters=[outputs["cluster_name"]])["clusters"][0][
        "clusterArn"
    ]
    (rule,) = [r for r in events.list_rules()["Rules"] if r["Name"].endswith("task-stopped")]
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {"clusterArn": [cluster_arn], "lastStatus": ["STOPPED"]},
    }
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    function_arn = aws("lambda").get_function(FunctionName=outputs["orchestrator_function_name"])
    assert target["Arn"] == function_arn["Configuration"]["FunctionArn"]

    # Undeliverable events land in the DLQ, which lets exactly this rule send to it.
    sqs = aws("sqs")
    dlq = sqs.get_queue_attributes(QueueUrl=outputs["dlq_url"], AttributeNames=["QueueArn", "Policy"])
    assert target["DeadLetterConfig"] == {"Arn": dlq["Attributes"]["QueueArn"]}
    (allow,) = _policy_statements(dlq["Attributes"]["Policy"])
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": rule["Arn"]}}


def test_task_definition_runs_the_dockerfile_command_read_only_with_scratch(
    aws: Any, outputs: dict[str, Any], variables: dict[str, Any]
) -> None:
    task = aws("ecs").describe_task_definition(taskDefinition=outputs["task_definition_arn"])[
        "taskDefinition"
    ]
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["networkMode"] == "awsvpc"
    assert (task["cpu"], task["memory"]) == (str(variables["task_cpu"]), str(variables["task_memory"]))
    assert task["ephemeralStorage"] == {"sizeInGiB": variables["task_ephemeral_storage_gib"]}
    (container,) = task["containerDefinitions"]
    assert container["name"] == "q4"
    assert container["command"] == dockerfile_cmd()
    # deploy.sh tags images git-<sha>[-dirty-<time>]: ECR tags are immutable.
    assert container["image"] == outputs["task_image"]
    assert container["image"].startswith(f"{outputs['ecr_repository_url']}:git-")
    assert container["readonlyRootFilesystem"] is True
    (mount,) = container["mountPoints"]
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert env["Q4_SCRATCH_DIR"] == mount["containerPath"]
    assert [v["name"] for v in task["volumes"]] == [mount["sourceVolume"]]
    assert env["Q4_INPUT_BUCKET"] == outputs["archive_bucket"]
    assert env["Q4_ARTIFACTS_BUCKET"] == outputs["artifacts_bucket"]
    assert env["Q4_DONE_QUEUE_URL"] == outputs["done_queue_url"]
    assert int(env["Q4_CHUNK_ROWS"]) > 0

    log = container["logConfiguration"]
    assert log["logDriver"] == "awslogs"
    (group,) = aws("logs").describe_log_groups(logGroupNamePrefix=log["options"]["awslogs-group"])[
        "logGroups"
    ]
    assert group["retentionInDays"] == variables["log_retention_days"]


def test_ecr_repository_scans_on_push_with_immutable_tags(aws: Any, outputs: dict[str, Any]) -> None:
    name = outputs["ecr_repository_url"].split("/", 1)[1]
    (repo,) = aws("ecr").describe_repositories(repositoryNames=[name])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}


def test_task_role_reads_only_run_inputs_writes_only_artifacts_sends_only_done(
    aws: Any, outputs: dict[str, Any]
) -> None:
    iam, sqs = aws("iam"), aws("sqs")
    task = aws("ecs").describe_task_definition(taskDefinition=outputs["task_definition_arn"])[
        "taskDefinition"
    ]
    statements = _inline_policy(iam, task["taskRoleArn"].rsplit("/", 1)[1])
    archive, artifacts = (
        f"arn:aws:s3:::{outputs['archive_bucket']}",
        f"arn:aws:s3:::{outputs['artifacts_bucket']}",
    )
    done_arn = sqs.get_queue_attributes(QueueUrl=outputs["done_queue_url"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]

    for statement in statements:
        assert statement["Effect"] == "Allow"
        resources = _as_list(statement["Resource"])
        actions = _as_list(statement["Action"])
        assert "*" not in resources and not any(a.endswith("*") for a in actions)
        if any(r.startswith(archive) for r in resources):
            assert set(actions) <= {"s3:GetObject", "s3:ListBucket"}, "the archive is read-only for the task"
            assert resources in ([f"{archive}/run=*/input/*"], [archive])
        if any(a.startswith("sqs:") for a in actions):
            assert actions == ["sqs:SendMessage"] and resources == [done_arn]
    writes = [s for s in statements if "s3:PutObject" in _as_list(s["Action"])]
    written = ("output/*", "model/*", "viz/*", "MANIFEST.json", "ERROR.json")
    shard_objects = ("shards/*/partial.json", "shards/*/data.npz", "shards/pass2/*/output/*")
    assert [sorted(_as_list(s["Resource"])) for s in writes] == [
        sorted(f"{artifacts}/run=*/{k}" for k in (*written, *shard_objects))
    ], "the task writes its artifacts, terminal document and shard partials, never job.json or launch records"
    deletes = [s for s in statements if any("Delete" in a for a in _as_list(s["Action"]))]
    assert [(_as_list(s["Action"]), _as_list(s["Resource"])) for s in deletes] == [
        (["s3:DeleteObject"], [f"{artifacts}/run=*/shards/pass2/*/output/*"])
    ], "the task deletes nothing but a sharded run's parts of its row outputs"
    listing = _by_sid(statements)["ListRunInputs"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "run=*/input/*"}}


def test_orchestrator_role_launches_only_this_family_and_passes_only_the_task_roles(
    aws: Any, outputs: dict[str, Any]
) -> None:
    iam = aws("iam")
    function = aws("lambda").get_function_configuration(FunctionName=outputs["orchestrator_function_name"])
    statements = _by_sid(_inline_policy(iam, function["Role"].rsplit("/", 1)[1]))
    task = aws("ecs").describe_task_definition(taskDefinition=outputs["task_definition_arn"])[
        "taskDefinition"
    ]
    cluster_arn = aws("ecs").describe_clusters(clusters=[outputs["cluster_name"]])["clusters"][0][
        "clusterArn"
    ]

    run_task = statements["LaunchTasks"]
    assert run_task["Action"] == "ecs:RunTask"
    assert re.fullmatch(
        rf"arn:aws:ecs:us-east-1:\d{{12}}:task-definition/{task['family']}:\*", run_task["Resource"]
    )
    assert run_task["Condition"] == {"ArnEquals": {"ecs:cluster": cluster_arn}}

    # DescribeTasks (a redriven STOPPED event is checked against ECS): only this cluster's tasks
    describe = statements["CheckRedrivenTasks"]
    assert describe["Action"] == "ecs:DescribeTasks"
    assert re.fullmatch(
        rf"arn:aws:ecs:us-east-1:\d{{12}}:task/{outputs['cluster_name']}/\*", describe["Resource"]
    )
    assert describe["Condition"] == {"ArnEquals": {"ecs:cluster": cluster_arn}}
    # StopTask (a failed sharded run's other tasks): only this cluster's tasks
    stop = statements["StopFailedRunsTasks"]
    assert stop["Action"] == "ecs:StopTask" and stop["Resource"] == describe["Resource"]
    assert stop["Condition"] == {"ArnEquals": {"ecs:cluster": cluster_arn}}

    pass_role = statements["PassTaskRoles"]
    assert pass_role["Action"] == "iam:PassRole"
    assert sorted(_as_list(pass_role["Resource"])) == sorted([task["taskRoleArn"], task["executionRoleArn"]])
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}

    consume = statements["ConsumeWorkQueue"]
    assert "sqs:DeleteMessage" in consume["Action"] and consume["Resource"].endswith(":q4-work")
    assert all(s["Effect"] == "Allow" and s.get("Resource") != "*" for s in statements.values())


def test_config_records_only_buckets_and_roles_by_default(aws: Any) -> None:
    config = aws("config")
    (recorder,) = config.describe_configuration_recorders()["ConfigurationRecorders"]
    group = recorder["recordingGroup"]
    assert group["allSupported"] is False
    assert sorted(group["resourceTypes"]) == ["AWS::IAM::Role", "AWS::S3::Bucket"]
    (status,) = config.describe_configuration_recorder_status()["ConfigurationRecordersStatus"]
    assert status["recording"] is True


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD of fargate/Dockerfile."""
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    command: list[str] = json.loads(line.removeprefix("CMD "))
    return command
