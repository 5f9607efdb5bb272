"""Fixtures for the infrastructure tests: the real terraform, a module copy, the provider mirror."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from q4.local import emulator, lambda_zip
from q4.local import terraform as tf


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


@pytest.fixture(scope="module")
def private_emulator() -> Iterator[emulator.Emulator]:
    """A moto server of our own: the apply test must not share state with tests that reset the session one."""
    server = emulator.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployed_stack(
    terraform_binary: str,
    private_emulator: emulator.Emulator,
    orchestrator_zip: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, object]:
    """ONE `terraform apply` of infrastructure/ against moto server; returns the outputs and the env used."""
    workdir = tf.copy_module(tmp_path_factory.mktemp("tf-apply") / "infrastructure")
    tf.write_emulator_override(workdir, private_emulator.endpoint_url)
    env = tf.terraform_env(workdir, base_env={**os.environ, **private_emulator.env})
    tf.init(workdir, env)
    variables = {
        "force_destroy": True,
        "event_source_mapping_enabled": False,
        "lambda_zip_path": str(orchestrator_zip),
        "lambda_timeout": 45,
        "task_cpu": 512,
        "task_memory": 2048,
        "task_ephemeral_storage_gib": 30,
        "log_retention_days": 14,
    }
    tf.apply(workdir, env, variables, parallelism=20)
    return {"outputs": tf.output_json(workdir, env), "variables": variables, "workdir": workdir, "env": env}
