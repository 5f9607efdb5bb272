"""Bring the local stack up and down: moto server, the real Terraform applied to it, the local runtime.

``up`` starts three things and records them in the state directory (:mod:`q4_local.state`):
the emulator (``python -m q4_local.moto_launcher``), the deployment (``infrastructure/`` copied to
``<state>/terraform``, an ``*_override.tf`` pointing the provider at the emulator, ``terraform
apply``), and the runtime (``python -m q4_local.runtime``). ``down`` stops exactly the processes
recorded there — each checked by pid, start time and command line — and nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from q4.errors import Q4Error
from q4_deploy import lambda_zip, terraform

from q4_local import emulator, scratch
from q4_local import state as stack_state
from q4_local.runtime import READY_FILE, aws_env
from q4_local.state import ProcessRecord, StackState

MOTO_MARKER = "q4_local.moto_launcher"
RUNTIME_MARKER = "q4_local.runtime"
#: Terraform outputs `q4 local env` exports, with the variable names it uses.
ENV_OUTPUTS = {
    "Q4_ARCHIVE_BUCKET": "archive_bucket",
    "Q4_ARTIFACTS_BUCKET": "artifacts_bucket",
    "Q4_WORK_QUEUE_URL": "work_queue_url",
    "Q4_DONE_QUEUE_URL": "done_queue_url",
    "Q4_DLQ_URL": "dlq_url",
    "Q4_TASK_LOG_GROUP": "task_log_group",
}
#: The local stack's region. Not us-east-1 or any region the aws CLI v1 maps to a legacy SQS host: for
#: those it forces `--endpoint-url https://<region>.queue.amazonaws.com` and ignores AWS_ENDPOINT_URL, so the
#: README's `aws sqs send-message` would leave the machine.
LOCAL_REGION = "eu-central-2"
#: Variables the local deployment sets (everything else keeps the module's defaults).
LOCAL_VARIABLES: dict[str, Any] = {"force_destroy": True}

Progress = Callable[[str], None]


class StackError(Q4Error):
    """The local stack could not be started, found or stopped."""


def _quiet(_: str) -> None:
    return None


# -- status ---------------------------------------------------------------------------------------------


def running_state(directory: Path) -> StackState | None:
    """The recorded state when the stack is fully up (emulator and runtime alive, deployment done)."""
    state = stack_state.load(directory)
    if state is None or not state.ready:
        return None
    if state.moto is None or not state.moto.is_ours() or state.runtime is None or not state.runtime.is_ours():
        return None
    return state


def _answers(endpoint_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint_url}/moto-api/", timeout=2):
            return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


# -- up -------------------------------------------------------------------------------------------------


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold ``<state>/.lock`` so that two `up`/`down` commands never work on one state dir at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(
                "stack_busy",
                f"Another `q4 local up` or `q4 local down` is working on {directory}; wait for it to finish.",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(
    directory: Path,
    progress: Progress = _quiet,
    *,
    max_tasks: int = 2,
    task_image: str | None = None,
    scratch_limit_mib: int | None = None,
) -> tuple[StackState, bool]:
    """Start the stack in ``directory`` (or find it running); returns the state and whether it was started.

    ``scratch_limit_mib`` (local-only, for tests of large inputs): caps every task's scratch quota; 0 removes
    the cap, None keeps the recorded one. Changing it on a running stack restarts its runtime (which stops
    the tasks running then: they end as crashes)."""
    with _exclusive(directory):
        return _up(directory, progress, max_tasks, task_image, scratch_limit_mib)


def _up(
    directory: Path, progress: Progress, max_tasks: int, task_image: str | None, scratch_limit_mib: int | None
) -> tuple[StackState, bool]:
    existing = stack_state.load(directory)
    if existing is not None and existing.ready and existing.moto and existing.moto.is_ours():
        if task_image is not None and task_image != existing.task_image:
            how = f"inside {existing.task_image}" if existing.task_image else "as processes"
            raise StackError(
                "stack_running",
                f"The local stack in {directory} is already up and runs tasks {how}; "
                f"run 'q4 local down' first to run them inside {task_image}.",
            )
        running = existing.runtime is not None and existing.runtime.is_ours()
        limit = existing.scratch_limit_mib if scratch_limit_mib is None else (scratch_limit_mib or None)
        if running and limit == existing.scratch_limit_mib:
            return existing, False
        if running and existing.runtime is not None:
            progress(f"restarting the local runtime with scratch limit {limit or 'none'} (MiB)")
            _stop(existing.runtime)
        else:
            progress("restarting the local runtime (the emulator is still up)")
        existing.scratch_limit_mib = limit
        stack_state.save(directory, existing)  # the runtime reads the limit from the state
        existing.runtime = _start_runtime(directory, max_tasks, existing.task_image)
        stack_state.save(directory, existing)
        return existing, not running
    if existing is not None:
        progress("cleaning up a stack that did not stop cleanly")
        _down(directory, progress)
    _forget(directory)
    started = time.monotonic()
    try:
        state = _start(directory, progress, max_tasks, task_image, scratch_limit_mib or None)
    except BaseException:
        _down(directory, _quiet)
        raise
    progress(f"local stack up in {time.monotonic() - started:.0f} s")
    return state, True


def _start(
    directory: Path, progress: Progress, max_tasks: int, task_image: str | None, scratch_limit_mib: int | None
) -> StackState:
    progress("starting the AWS emulator (moto server)")
    server = emulator.start(log_path=directory / "moto.log")
    state = StackState(
        endpoint_url=server.endpoint_url,
        region=LOCAL_REGION,
        moto=ProcessRecord.of(server.process.pid, MOTO_MARKER),
    )
    stack_state.save(directory, state)

    progress("building the orchestrator Lambda zip")
    zip_path = lambda_zip.build(directory / "build" / "orchestrator.zip")

    workdir = directory / "terraform"
    terraform.copy_module(workdir)
    terraform.write_emulator_override(workdir, state.endpoint_url)
    env = terraform.terraform_env(
        workdir, base_env={**os.environ, **aws_env(state.endpoint_url, state.region)}
    )
    progress("terraform init")
    terraform.init(workdir, env)
    _apply(
        workdir,
        env,
        {**LOCAL_VARIABLES, "lambda_zip_path": str(zip_path), "region": state.region},
        directory / "terraform.log",
        progress,
    )
    state.outputs = terraform.output_json(workdir, env)
    state.lambda_zips = {str(state.outputs["orchestrator_function_name"]): str(zip_path)}
    stack_state.save(directory, state)

    progress("starting the local runtime")
    state.task_image = task_image
    state.scratch_limit_mib = scratch_limit_mib
    stack_state.save(directory, state)  # the runtime reads the limit from the state
    state.runtime = _start_runtime(directory, max_tasks, task_image)
    state.ready = True
    stack_state.save(directory, state)
    return state


def _apply(
    workdir: Path, env: dict[str, str], variables: dict[str, Any], log_path: Path, progress: Progress
) -> None:
    """``terraform apply``, streaming output to ``log_path`` and progress (resources created).

    (A thin wrapper beside :func:`q4_deploy.terraform.apply`, which captures the output instead.)
    """
    binary = shutil.which("terraform", path=env.get("PATH"))
    if binary is None:
        raise StackError(
            "terraform_missing", "terraform is not on PATH; install Terraform >= 1.6 and try again."
        )
    command = [
        binary,
        "apply",
        "-auto-approve",
        "-input=false",
        "-no-color",
        "-parallelism=20",
        *terraform.var_args(variables),
    ]
    created = 0
    errors: list[str] = []
    progress("terraform apply")
    with open(log_path, "a", buffering=1) as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                text = line.strip()
                if ": Creation complete" in text:
                    created += 1
                    progress(f"terraform apply: {created} resources created")
                elif text.startswith("Error:"):
                    errors.append(text.removeprefix("Error:").strip().rstrip("."))
        except BaseException:  # interrupted: do not leave terraform running against a dying emulator
            process.terminate()
            process.wait()
            raise
        code = process.wait()
    if code != 0:
        reason = errors[0] if errors else f"exit code {code}"
        raise StackError("terraform_failed", f"terraform apply failed: {reason} (full output in {log_path}).")


def _start_runtime(
    directory: Path, max_tasks: int, task_image: str | None = None, timeout: float = 60.0
) -> ProcessRecord:
    ready = directory / READY_FILE
    ready.unlink(missing_ok=True)
    log_path = directory / "runtime.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                RUNTIME_MARKER,
                "--state-dir",
                str(directory),
                "--max-tasks",
                str(max_tasks),
                *(["--task-image", task_image] if task_image else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = ProcessRecord.of(process.pid, RUNTIME_MARKER)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise StackError("runtime_failed", f"The local runtime exited while starting; see {log_path}.")
        if time.monotonic() > deadline:
            process.kill()
            raise StackError(
                "runtime_failed", f"The local runtime did not start within {timeout:.0f} s; see {log_path}."
            )
        time.sleep(0.1)
    return record


# -- down -----------------------------------------------------------------------------------------------


def down(directory: Path, progress: Progress = _quiet) -> list[str]:
    """Stop what ``up`` recorded in ``directory`` (runtime first: it stops its tasks); say what stopped."""
    if not stack_state.state_file(directory).exists():
        return []
    with _exclusive(directory):
        return _down(directory, progress)


def _down(directory: Path, progress: Progress) -> list[str]:
    state = stack_state.load(directory)
    stopped: list[str] = []
    if state is None:
        return stopped
    if state.runtime is not None and _stop(state.runtime):
        stopped.append(f"local runtime (pid {state.runtime.pid})")
        progress(stopped[-1] + " stopped")
    stopped += _stop_orphan_tasks(directory)
    if state.moto is not None and _stop(state.moto):
        stopped.append(f"AWS emulator (pid {state.moto.pid})")
        progress(stopped[-1] + " stopped")
    _forget(directory)
    return stopped


def _stop(record: ProcessRecord, timeout: float = 15.0) -> bool:
    """SIGTERM then, after ``timeout``, SIGKILL the recorded process if it is still the one we started."""
    if not record.is_ours():
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while record.is_ours() and not stack_state.is_zombie(record.pid):
        if time.monotonic() > deadline:
            os.kill(record.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return True


def _stop_orphan_tasks(directory: Path) -> list[str]:
    """Task processes a runtime that died hard left behind (the ledger has their pids and start stamps)."""
    ledger = directory / "ledger.json"
    if not ledger.exists():
        return []
    stopped = []
    for arn, entry in json.loads(ledger.read_text()).items():
        pid, stamp = entry.get("pid"), entry.get("pid_started")
        if (
            entry.get("status") == "running"
            and pid
            and stamp
            and stack_state.process_start_stamp(pid) == stamp
        ):
            try:
                os.killpg(pid, signal.SIGKILL)
                stopped.append(f"task {arn.rsplit('/', 1)[-1]} (pid {pid})")
            except (ProcessLookupError, PermissionError):
                pass
    return stopped


def _forget(directory: Path) -> None:
    """Drop what belonged to a stopped emulator (state, ledger, deployment, task scratch); keep the logs."""
    scratch.release_all(directory / "tasks")  # tmpfs scratch dirs a runtime that died left mounted
    for name in ("stack.json", "ledger.json", READY_FILE):
        (directory / name).unlink(missing_ok=True)
    for name in ("terraform", "tasks"):
        shutil.rmtree(directory / name, ignore_errors=True)


# -- env ------------------------------------------------------------------------------------------------


def env_vars(state: StackState) -> dict[str, str]:
    """The variables `q4 local env` exports: endpoint, credentials, region and the deployment's names."""
    values = aws_env(state.endpoint_url, state.region)
    values.update({name: str(state.outputs[output]) for name, output in ENV_OUTPUTS.items()})
    return values


def export_lines(state: StackState) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env_vars(state).items())
