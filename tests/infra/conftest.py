"""Fixtures for the infrastructure tests: the real terraform, a module copy, the provider mirror."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from q4_deploy import lambda_zip
from q4_deploy import terraform as tf
from q4_local import emulator
from support import headstart

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def terraform_binary() -> str:
    """Path of terraform; the infrastructure tests skip (saying why) where it is not installed."""
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not on PATH: install Terraform >= 1.6 to run the infrastructure tests")
    return binary


@pytest.fixture(scope="session")
def initialized_module(
    terraform_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """A copy of infrastructure/ after `terraform init` (provider from the local mirror when there is one)."""
    workdir = tf.copy_module(tmp_path_factory.mktemp("tf-validate") / "infrastructure")
    env = tf.terraform_env(workdir)
    tf.init(workdir, env)
    return workdir, env


@pytest.fixture(scope="session")
def orchestrator_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The orchestrator zip, built the way scripts/build_lambda_zip.sh builds it."""
    return lambda_zip.build(tmp_path_factory.mktemp("lambda") / "orchestrator.zip")


def _deploy(base: Path) -> dict[str, object]:
    """ONE deployment of infrastructure/ to a moto server of its own by scripts/deploy.sh (its emulator
    mode, the path docker-compose users take), with non-default variables. Runs in a background thread
    (tests/support/headstart.py): explicit environments only, and the emulator stopped if anything fails."""
    if shutil.which("terraform") is None:
        raise RuntimeError("terraform is not on PATH")
    server = emulator.start(log_path=base / "moto.log")
    try:
        build = base / "deploy"
        build.mkdir()
        variables = {
            "lambda_timeout": 45,
            "task_cpu": 512,
            "task_memory": 2048,
            "task_ephemeral_storage_gib": 30,
            "log_retention_days": 14,
            "restrict_dlq_sources": True,  # the emulator launcher reads RedriveAllowPolicy back: check it too
        }
        env = {**headstart.ENVIRON, **server.env, "Q4_BUILD_DIR": str(build), "SKIP_IMAGE": "1"}
        result = subprocess.run(
            [str(ROOT / "scripts" / "deploy.sh"), "-no-color", "-parallelism=20", *tf.var_args(variables)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"deploy.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        workdir = build / "emulator-terraform"
        outputs = tf.output_json(workdir, tf.terraform_env(build / "terraform-cli", base_env=env))
    except BaseException:
        server.stop()
        raise
    return {
        "outputs": outputs,
        "variables": variables,
        "workdir": workdir,
        "zip": build / "orchestrator.zip",
        "emulator": server,
    }


def _undeploy(deployed: dict[str, object]) -> None:
    server = deployed["emulator"]
    assert isinstance(server, emulator.Emulator)
    server.stop()


headstart.register("deployed_stack", _deploy, _undeploy)


@pytest.fixture(scope="session")
def deployed_stack(
    terraform_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """The deployment above: outputs, the variables given, the terraform work dir, the zip, its emulator
    (a moto server of its own: it must not share state with tests that reset the session one)."""
    yield headstart.take("deployed_stack", tmp_path_factory.mktemp)
    headstart.release("deployed_stack")


@pytest.fixture(scope="session")
def private_emulator(deployed_stack: dict[str, object]) -> emulator.Emulator:
    server = deployed_stack["emulator"]
    assert isinstance(server, emulator.Emulator)
    return server
