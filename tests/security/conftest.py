"""One deployment of infrastructure/ to a private moto server that then enforces IAM.

The stack is applied with the real Terraform while the emulator still accepts anything; the fixture then
creates an administrator (for the tests' own checks), assumes the task and orchestrator roles through the
emulator's STS, uploads the inputs and switches IAM enforcement on (moto's ``/moto-api/reset-auth`` with 0:
every later request must be signed by known credentials and is authorized against their policies).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from q4_deploy import lambda_zip
from q4_deploy import terraform as tf
from q4_local import emulator
from support import headstart
from support.enforcing import REGION, EnforcingStack

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("iam_emulator.py")
#: Runs the tests use: their inputs are uploaded before enforcement starts.
RUNS = ("sec-1", "sec-2", "sec-3", "sec-4")
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def input_csv(rows: int = 300, seed: int = 5) -> bytes:
    """A small numeric table with structure (two correlated columns and noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(rows, 2))
    table = np.column_stack(
        [base[:, 0], base[:, 0] * 0.8 + base[:, 1] * 0.2, base[:, 1], rng.normal(size=rows)]
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["a", "b", "c", "d"])
    writer.writerows([[f"{v:.6f}" for v in row] for row in table])
    return out.getvalue().encode()


def _start_enforcing_emulator(log_path: Path, timeout: float = 30.0) -> tuple[str, subprocess.Popen[bytes]]:
    port = emulator.free_port()
    env = {
        **headstart.ENVIRON,
        **emulator.CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "MOTO_DOCKER_NETWORK_MODE": "host",
    }
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # enforcement is switched on after the deployment
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the enforcing moto server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return endpoint, process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the enforcing moto server did not answer within {timeout:.0f} s")


def enforce_iam(endpoint_url: str) -> None:
    """From now on every request needs known credentials and their policies' permission."""
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def _up(base: Path) -> tuple[EnforcingStack, subprocess.Popen[bytes]]:
    """The enforcing emulator and the deployment (a background thread: tests/support/headstart.py)."""
    if shutil.which("terraform") is None:
        raise RuntimeError("terraform is not on PATH")
    endpoint, process = _start_enforcing_emulator(base / "moto.log")
    try:
        return _deploy_and_prepare(endpoint, base), process
    except BaseException:
        _down((None, process))
        raise


def _down(deployed: tuple[EnforcingStack | None, subprocess.Popen[bytes]]) -> None:
    process = deployed[1]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


headstart.register("enforcing_stack", _up, _down)


# session, not package: with pytest-randomly, modules of other packages run between security modules, and a
# package-scoped fixture would be torn down (the deployment released) and then taken again, dead.
@pytest.fixture(scope="session")
def enforcing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcingStack]:
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH: install Terraform >= 1.6 to run the least-privilege tests")
    try:
        yield headstart.take("enforcing_stack", tmp_path_factory.mktemp)[0]
    finally:
        headstart.release("enforcing_stack")


def _deploy_and_prepare(endpoint: str, base: Path) -> EnforcingStack:
    open_env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}
    zip_path = lambda_zip.build(base / "orchestrator.zip")
    workdir = tf.copy_module(base / "terraform")
    tf.write_emulator_override(workdir, endpoint)
    env = tf.terraform_env(workdir, base_env={**headstart.ENVIRON, **open_env, **emulator.CREDENTIALS})
    tf.init(workdir, env)
    # config_recording=off: the Config role is not under test and its resources only slow the apply.
    variables = {"force_destroy": True, "lambda_zip_path": str(zip_path), "config_recording": "off"}
    tf.apply(workdir, env, variables, parallelism=20)
    outputs = tf.output_json(workdir, env)

    session = boto3.session.Session()  # not the default one: this runs in a background thread

    def open_client(service: str) -> Any:
        return session.client(
            service,
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    iam, sts = open_client("iam"), open_client("sts")
    iam.create_user(UserName="q4-security-admin")
    iam.put_user_policy(
        UserName="q4-security-admin", PolicyName="everything", PolicyDocument=json.dumps(ADMIN_POLICY)
    )
    key = iam.create_access_key(UserName="q4-security-admin")["AccessKey"]
    credentials = {
        "admin": {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    }
    roles = {}
    for principal in ("task", "orchestrator"):
        role = iam.get_role(RoleName=f"q4-{principal}")["Role"]
        roles[principal] = role["Arn"]
        assumed = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=f"security-test-{principal}")
        creds = assumed["Credentials"]
        credentials[principal] = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }

    function = open_client("lambda").get_function_configuration(
        FunctionName=outputs["orchestrator_function_name"]
    )
    lambda_env = dict(function.get("Environment", {}).get("Variables", {}))
    definition = open_client("ecs").describe_task_definition(taskDefinition=outputs["task_definition_arn"])
    container = definition["taskDefinition"]["containerDefinitions"][0]
    task_env = {item["name"]: item["value"] for item in container.get("environment", [])}

    s3 = open_client("s3")
    for run_id in RUNS:
        s3.put_object(
            Bucket=outputs["archive_bucket"],
            Key=f"run={run_id}/input/data.csv",
            Body=input_csv(seed=len(run_id)),
        )
    s3.put_object(Bucket=outputs["archive_bucket"], Key="run=sec-1/notes.txt", Body=b"not an input")
    scratch = base / "scratch"
    scratch.mkdir()
    enforce_iam(endpoint)
    return EnforcingStack(endpoint, outputs, credentials, lambda_env, task_env, scratch, roles)
