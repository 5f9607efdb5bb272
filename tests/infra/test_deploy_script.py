"""scripts/deploy.sh refuses an AWS deployment it could not finish, before touching Terraform."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_to_aws_without_a_docker_engine_stops_with_one_sentence(tmp_path: Path) -> None:
    # GIVEN a docker CLI whose engine does not answer, and no emulator endpoint
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "docker").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "docker").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env |= {"PATH": f"{fake_bin}:{env['PATH']}", "Q4_BUILD_DIR": str(tmp_path / "build")}

    # WHEN deploying
    result = subprocess.run(
        [str(ROOT / "scripts" / "deploy.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    # THEN it stops with one clear line and built or initialised nothing
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "deploy: no docker engine answers; start Docker, "
        "or set SKIP_IMAGE=1 with IMAGE_TAG=<a tag already in ECR>."
    ]
    assert not (tmp_path / "build").exists()
