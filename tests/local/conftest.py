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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Q4 = str(BIN / "q4")


def clean_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "Q4_"))}
    env["Q4_LOCAL_STATE_DIR"] = str(state_dir)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A local stack brought up with `q4 local up --detach` in a fresh state dir, downed at the end."""
    state_dir = tmp_path_factory.mktemp("stack") / "state"
    env = clean_env(state_dir)
    started = time.monotonic()
    up = subprocess.run(
        [Q4, "local", "up", "--detach"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    up_seconds = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = subprocess.run(
            [Q4, "local", "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
        aws = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        aws = {key: shlex.split(value)[0] for key, value in aws.items()}
        print(f"\nlocal stack up in {up_seconds:.0f} s", file=sys.stderr)
        yield {"state_dir": state_dir, "env": env, "aws": aws, "exports": exports, "up": up}
    finally:
        subprocess.run([Q4, "local", "down"], env=env, capture_output=True, timeout=120, check=False)
