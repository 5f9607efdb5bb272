"""The local stack shared by tests/local: `q4 local up --detach` once per session (terraform apply ~100 s).

Its tests run in any order; the fixture's teardown takes the stack down with `q4 local down` and checks that
everything it started is gone (the release downs it again: harmless).
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

import boto3
import pytest
from q4_local import state as stack_state
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
    """`q4 local up --detach` in a fresh state dir (a background thread: tests/support/headstart.py)."""
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
    """A local stack brought up with `q4 local up --detach` in a fresh state dir; at the end `q4 local down`
    must stop everything it started."""
    try:
        deployed = headstart.take("stack", tmp_path_factory.mktemp)
    except BaseException:
        headstart.release("stack")
        raise
    try:
        yield deployed
    finally:
        state = stack_state.load(deployed["state_dir"])
        was_up = state is not None and all(p is not None and p.is_ours() for p in (state.moto, state.runtime))
        down = subprocess.run(
            [Q4, "local", "down"], env=deployed["env"], capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        headstart.release("stack")
    assert was_up, "the emulator or the runtime of the local stack was no longer running at the end"
    assert_down_stopped_everything(deployed, state, down)


def assert_down_stopped_everything(
    stack: dict[str, Any], state: stack_state.StackState | None, down: subprocess.CompletedProcess[str]
) -> None:
    """`q4 local down` stopped the emulator and the runtime it started, left no process naming the state dir
    (runtime, tasks), closed the endpoint, and `q4 local env` then says the stack is not running."""
    assert state is not None and state.moto is not None and state.runtime is not None
    assert down.returncode == 0, down.stderr
    assert not state.moto.is_ours() and not state.runtime.is_ours()
    leftovers = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert str(stack["state_dir"]) not in leftovers
    aws = stack["aws"]
    sqs = boto3.client(
        "sqs", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_REGION"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - any connection error
        sqs.list_queues()
    env_after = subprocess.run(
        [Q4, "local", "env"], env=stack["env"], capture_output=True, text=True, check=False
    )
    assert env_after.returncode != 0 and "not running" in env_after.stderr
