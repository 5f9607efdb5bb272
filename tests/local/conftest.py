"""The local stack shared by tests/local: `q4 local up --detach` once per session (terraform apply ~100 s).

test_faults.py and test_load.py run before test_stack.py (file order), whose last test,
`test_down_stops_everything_it_started`, takes the stack down; the finalizer downs it again (harmless).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import headstart

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")


def clean_env(state_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ``os.environ``) without AWS_/Q4_ variables, pointed at ``state_dir``."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if not k.startswith(("AWS_", "Q4_"))}
    env["Q4_LOCAL_STATE_DIR"] = str(state_dir)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _up(base: Path) -> dict[str, Any]:
    """`q4 local up --detach` in a fresh state dir (a background thread: tests/headstart.py)."""
    state_dir = base / "state"
    env = clean_env(state_dir, headstart.ENVIRON)
    started = time.monotonic()
    try:
        up = subprocess.run(
            [Q4, "local", "up", "--detach"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
            check=False,
        )  # fmt: skip
        up_seconds = time.monotonic() - started
        if up.returncode != 0:
            raise RuntimeError(f"q4 local up --detach exited {up.returncode}:\n{up.stderr[-3000:]}")
        exports = subprocess.run(
            [Q4, "local", "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
    except BaseException:
        _down({"env": env})
        raise
    aws = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    aws = {key: shlex.split(value)[0] for key, value in aws.items()}
    print(f"\nlocal stack up in {up_seconds:.0f} s", file=sys.stderr)
    return {"state_dir": state_dir, "env": env, "aws": aws, "exports": exports, "up": up}


def _down(stack: dict[str, Any]) -> None:
    subprocess.run([Q4, "local", "down"], env=stack["env"], capture_output=True, timeout=120, check=False)


headstart.register("stack", _up, _down)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A local stack brought up with `q4 local up --detach` in a fresh state dir, downed at the end."""
    try:
        yield headstart.take("stack", tmp_path_factory.mktemp)
    finally:
        headstart.release("stack")
