"""Fixtures shared by the test directories: a real moto server over HTTP, started once per test session; a
pipeline's resources in it (tests/runtime, tests/hostile); and the head start of the slow deployments
(tests/support/headstart.py). Helpers live in tests/support/ (on the path: ``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from q4_local import emulator
from support import headstart
from support.pipeline import Pipeline

#: Fixtures behind a Terraform deployment to a moto server (tests/support/headstart.py): tests using one are
#: marked ``deploy`` (and ``slow``).
DEPLOYMENTS = frozenset({"deployed_stack", "stack", "image_stack", "enforcing_stack"})
#: Tests marked ``slow`` here, by module: each took more than ~3 s on 2 busy cores (real subprocess pipelines,
#: large inputs, property tests with many examples); "*" is the whole module. `pytest -m "not slow"` is the
#: fast set. A listed name that no longer exists is an error, so a rename cannot quietly make a test "fast".
SLOW: dict[str, frozenset[str]] = {
    "core/test_cli_run.py": frozenset({"test_real_command_line_exit_codes_and_no_traceback"}),
    "core/test_csv_text.py": frozenset({"test_only_values_that_need_quotes_get_them_in_every_chunk"}),
    "core/test_memory_bound.py": frozenset({"*"}),
    "core/test_run_concurrency.py": frozenset({"*"}),
    "core/test_seeds_and_full_mode.py": frozenset(
        {"test_full_mode_writes_study_plots_and_a_report", "test_seeds_local_testing_snippet_runs_unchanged"}
    ),
    "core/test_warnings.py": frozenset({"test_headerless_csv_warns_and_still_runs"}),
    "hostile/test_cli_hostile.py": frozenset({"*"}),
    "hostile/test_input_keys.py": frozenset({"test_listed_keys_stay_under_the_download_root"}),
    "hostile/test_message_validator.py": frozenset(
        {
            "test_any_json_value_gets_a_job_or_a_bounded_rejection",
            "test_any_text_gets_a_job_or_a_bounded_rejection",
            "test_hostile_messages_never_yield_a_key_outside_the_run",
            "test_keys_made_of_hostile_segments_stay_under_the_input_root",
        }
    ),
    "hostile/test_model_file.py": frozenset({"test_a_mutated_model_is_applied_or_refused"}),
    "hostile/test_parquet_metadata.py": frozenset({"*"}),
    "hostile/test_submit_fetch_hostile.py": frozenset(
        {
            "test_a_large_input_goes_up_as_a_conditional_multipart_upload",
            "test_generated_manifests_never_write_outside_the_run_directory",
        }
    ),
    "hostile/test_table_reader.py": frozenset({"*"}),
    "infra/test_terraform_static.py": frozenset({"*"}),
    "local/test_runtime.py": frozenset({"*"}),
    "runtime/test_orchestrator.py": frozenset({"test_bad_messages_are_rejected_at_once_with_a_done_message"}),
    "runtime/test_pipeline_cli.py": frozenset({"*"}),
    "runtime/test_recovery_and_package.py": frozenset({"*"}),
    "runtime/test_redrive.py": frozenset({"*"}),
    "runtime/test_task.py": frozenset({"*"}),
    "security/test_audit_deps.py": frozenset(
        {"test_advisory_for_the_locked_version_fails", "test_allow_listed_advisory_passes"}
    ),
    "viz/test_viz_plots.py": frozenset(
        {
            "test_different_data_gives_different_plots",
            "test_png_bytes_are_deterministic_and_carry_no_software_stamp",
            "test_wide_tables_stay_readable_and_small",
        }
    ),
    "viz/test_viz_report.py": frozenset({"test_report_bytes_are_deterministic"}),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``deploy`` (and ``slow``) the tests that need a deployment, and ``slow`` those listed in SLOW."""
    tests = Path(__file__).parent
    for item in items:
        if DEPLOYMENTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.deploy)
            item.add_marker(pytest.mark.slow)
        module = getattr(item, "module", None)
        if module is None or module.__file__ is None:
            continue
        names = SLOW.get(Path(module.__file__).relative_to(tests).as_posix())
        if names is None:
            continue
        missing = sorted(name for name in names - {"*"} if not hasattr(module, name))
        if missing:
            raise pytest.UsageError(
                f"tests/conftest.py SLOW names tests that {module.__file__} lacks: {missing}"
            )
        if "*" in names or getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start, in the background, every registered deployment a selected test needs."""
    if session.config.option.collectonly:
        return
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    factory = session.config._tmp_path_factory  # what the tmp_path_factory fixture returns
    started = headstart.start_needed(needed, lambda name: factory.mktemp(f"headstart-{name}"))
    if started:
        print(f"\nstarted in the background: {', '.join(started)}", file=sys.stderr)


def pytest_sessionfinish(session: pytest.Session) -> None:
    headstart.shutdown()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[emulator.Emulator]:
    """A real moto server on a free loopback port, shared by the session (reset it for a clean one)."""
    server = emulator.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server: emulator.Emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 (and subprocesses inheriting os.environ) at the moto server for one test."""
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    return moto_server.env


@pytest.fixture
def pipeline(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """Buckets, a work queue with a DLQ (maxReceiveCount 2), a done queue, a Fargate cluster and task
    definition in the moto server; the orchestrator's environment is set for the test."""
    name = f"q4t-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    ecs = boto3.client("ecs")
    ec2 = boto3.client("ec2")
    for bucket in (f"{name}-archive", f"{name}-artifacts"):
        s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    work_url = sqs.create_queue(
        QueueName=f"{name}-work",
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
        },
    )["QueueUrl"]
    done_url = sqs.create_queue(QueueName=f"{name}-done")["QueueUrl"]
    ecs.create_cluster(clusterName=f"{name}-cluster")
    task_definition = ecs.register_task_definition(
        family=f"{name}-task",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="4096",
        containerDefinitions=[
            {"name": "q4", "image": "q4:latest", "command": ["q4-task"], "essential": True, "memory": 4096}
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # moto's RunTask (awsvpc) needs DNS hostnames on the VPC, as the Terraform VPC enables them.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description="q4 tasks", VpcId=vpc)["GroupId"]
    result = Pipeline(
        archive_bucket=f"{name}-archive",
        artifacts_bucket=f"{name}-artifacts",
        work_queue_url=work_url,
        dlq_url=dlq_url,
        done_queue_url=done_url,
        cluster=f"{name}-cluster",
        task_definition=task_definition,
        subnet=subnet,
        security_group=group,
        max_receive_count=2,
    )
    for key, value in result.lambda_env.items():
        monkeypatch.setenv(key, value)
    return result


@pytest.fixture
def boto_hooks() -> Iterator[Callable[[str, Callable[..., Any]], None]]:
    """Register botocore event hooks on boto3's default session (used by clients the code under test
    creates); unregistered after the test."""
    session = boto3._get_default_session()
    registered: list[tuple[str, Callable[..., Any]]] = []

    def register(event_name: str, hook: Callable[..., Any]) -> None:
        session.events.register(event_name, hook)
        registered.append((event_name, hook))

    yield register
    for event_name, hook in registered:
        session.events.unregister(event_name, hook)
