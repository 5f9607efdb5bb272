"""The task image for tests: which engine can build and run it here, and the image scripts/build_image.sh
builds (or finds up to date in the layer cache). Tests skip with the reason these return, never silently."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"


def engine() -> tuple[str | None, str]:
    """(``"docker"`` | ``"buildah"`` | None, why not): docker when an engine answers, else buildah when it
    is installed and can start a container here."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0:
        return "docker", ""
    buildah = shutil.which("buildah")
    if buildah is None:
        return None, "neither docker nor buildah can run: no docker engine answers, buildah is not installed"
    probe = subprocess.run([buildah, "from", "scratch"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return None, f"neither docker nor buildah can run: buildah from scratch: {probe.stderr.strip()}"
    subprocess.run([buildah, "rm", probe.stdout.strip()], capture_output=True, timeout=60)
    return "buildah", ""


def can_run_tasks_inside() -> tuple[bool, str]:
    """Whether q4_local.image_task can run a task inside a buildah image here (it needs buildah and mount
    namespaces), and why not."""
    found, why = engine()
    if found != "buildah":
        return False, why or "q4_local.image_task runs images through buildah; this machine has docker"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return False, f"no mount namespaces here (unshare --mount: {probe.stderr.strip()})"
    return True, ""


def build(engine_name: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/build_image.sh with ``engine_name``; its last stdout line is the image reference."""
    env = {**os.environ, "Q4_IMAGE_ENGINE": engine_name}
    return subprocess.run(
        [str(BUILD_SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
