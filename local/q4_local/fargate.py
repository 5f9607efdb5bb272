"""The Fargate stand-in: each task that ``RunTask`` recorded in the cluster runs as a local process.

A task runs its definition's essential container (entry point + command) with the definition's
environment plus the container overrides, the endpoint, credentials and region, ``Q4_TASK_ARN`` and a
per-task scratch dir (``Q4_SCRATCH_DIR``, also standing in for the container's mount points); the ECS
agent's task metadata endpoint is a folder of files. How a task's process is made is
:func:`task_launch`'s alone (command line, environment, working directory). At most ``max_tasks`` run
at once; the others wait as PROVISIONING tasks would. When a task's main process exits, whatever is left
of its process group is killed (a container stops as a whole), the task is marked ``exited`` in the
ledger with its real exit code and stopped in the emulator; its STOPPED event is EventBridge's job.
A task stopped through ECS (``StopTask``: ``q4 cancel``) is noticed by :meth:`Fargate.notice_stops`: its
main process gets SIGTERM, its process group SIGKILL after the container's ``stopTimeout``, and its event
carries stop code ``UserInitiated`` with the StopTask reason.

Each task's scratch dir holds at most its ephemeral storage, capped by the stack's local scratch limit
(:mod:`q4_local.scratch`): a tmpfs of that size where the runtime may mount one and a limit is set (a write
past it fails with ENOSPC, as on Fargate), else a watcher that stops the task once the dir holds more (stop
reason ``EphemeralStorageExhausted: ...``, no exit code: a crash). The task metadata reports the quota as
``EphemeralStorageMetrics.Reserved`` and what the dir holds as ``Utilized`` (MiB).

A restarted runtime neither reruns nor loses a task: a task still running is adopted, a finished one has
its exit code in its folder, a vanished one is reported stopped without an exit code (a crash, which the
orchestrator retries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from q4_local import scratch as scratch_quota
from q4_local import state as stack_state
from q4_local.ledger import Ledger, TaskRecord, now, task_id
from q4_local.logs import FileTail, LogStream, awslogs_destination

log = logging.getLogger("q4_local.runtime.fargate")

LOST_REASON = "Task process lost: the local runtime stopped while the task was running"
EXITED_REASON = "Essential container in task exited"
#: The stop code ECS gives a task stopped by StopTask (``q4 cancel``).
USER_INITIATED = "UserInitiated"
#: Seconds between SIGTERM and SIGKILL when the container definition sets no ``stopTimeout`` (Fargate's).
DEFAULT_STOP_TIMEOUT_S = 30
_EXIT_WRAPPER = 'f=$1; shift; "$@"; c=$?; echo "$c" > "$f"; exit "$c"'


@dataclass(frozen=True)
class Container:
    """A task's essential container as RunTask asked for it: the task, its definition and the overrides."""

    task: dict[str, Any]  # the DescribeTasks entry
    definition: dict[str, Any]  # the task definition
    container: dict[str, Any]  # the essential container's definition
    override: dict[str, Any]  # its entry in the task's containerOverrides ({} when none)
    scratch_mib: int | None = None  # the quota enforced on its scratch dir (None: its ephemeral storage)

    @property
    def command(self) -> list[str]:
        """Entry point + command, the override's command replacing the definition's."""
        return list(self.container.get("entryPoint") or []) + list(
            self.override.get("command") or self.container.get("command") or []
        )

    @property
    def environment(self) -> dict[str, str]:
        """The definition's environment, updated by the override's."""
        environment = {item["name"]: item["value"] for item in self.container.get("environment", [])}
        environment.update({item["name"]: item["value"] for item in self.override.get("environment", [])})
        return environment


@dataclass(frozen=True)
class Launch:
    """How to start a task's main process: command line, its whole environment, working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


#: Builds a task's :class:`Launch` from its record, container, folder (``tasks/<task-id>``) and the
#: emulator's variables (see :func:`q4_local.runtime.aws_env`).
TaskLauncher = Callable[[TaskRecord, Container, Path, dict[str, str]], Launch]


def task_launch(record: TaskRecord, container: Container, task_dir: Path, aws_env: dict[str, str]) -> Launch:
    """The task as a process of this machine: its command looked up on ``PATH`` with this virtualenv's
    ``bin/`` first, in its scratch dir (``HOME`` too); values pointing into a container mount point (the
    scratch volume) point into the scratch dir; no other variable of the caller's leaks in."""
    scratch = task_dir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    environment = container.environment
    # The container's mount points (the scratch volume) become the task's local scratch dir.
    for mount in container.container.get("mountPoints", []):
        path = mount.get("containerPath")
        for key, value in environment.items():
            if path and (value == path or value.startswith(path.rstrip("/") + "/")):
                environment[key] = str(scratch) + value[len(path.rstrip("/")) :]
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "LANG": "C.UTF-8",
        "HOME": str(scratch),
        "MPLCONFIGDIR": str(scratch / ".matplotlib"),
        **environment,
        "ECS_CONTAINER_METADATA_URI_V4": write_task_metadata(task_dir, container).as_uri(),
        **aws_env,
        "Q4_TASK_ARN": record.task_arn,
        "Q4_SCRATCH_DIR": str(scratch),
    }
    return Launch(argv=container.command, env=env, cwd=scratch)


def write_task_metadata(task_dir: Path, container: Container) -> Path:
    """The ECS agent's task metadata endpoint v4, as files: ``q4-task`` reads
    ``$ECS_CONTAINER_METADATA_URI_V4/task`` (TaskARN, Limits) with urllib, which opens file:// URLs as it
    opens the agent's http:// one. Returns the folder standing in for the endpoint."""
    metadata = task_dir / "metadata"
    metadata.mkdir(exist_ok=True)
    (metadata / "task").write_text(json.dumps(task_metadata(container), default=str))
    return metadata


class Fargate:
    """Runs the cluster's RUNNING tasks as local processes, driven by :meth:`take_on`, :meth:`start_pending`
    and :meth:`reap`; every task it took on is in ``ledger``."""

    def __init__(
        self,
        ecs: Any,
        cluster_arn: str,
        ledger: Ledger,
        tasks_dir: Path,
        aws_env: dict[str, str],
        max_tasks: int,
        launcher: TaskLauncher = task_launch,
        logs: Any | None = None,
        scratch_limit_mib: int | None = None,
        mount_scratch: bool | None = None,
    ) -> None:
        """``logs`` (a CloudWatch Logs client) receives the tasks' output; None: only ``task.log``.
        ``scratch_limit_mib`` caps every task's scratch quota (the local-only ``--scratch-limit-mib``);
        ``mount_scratch`` says whether a tmpfs enforces it (None: where a limit is set and the runtime may
        mount, :func:`q4_local.scratch.can_mount`; False: always the watcher)."""
        self.ecs = ecs
        self.logs = logs
        self.tails: dict[str, FileTail | None] = {}
        self.cluster_arn = cluster_arn
        self.ledger = ledger
        self.tasks_dir = tasks_dir
        self.aws_env = aws_env
        self.max_tasks = max_tasks
        self.launcher = launcher
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.scratch_limit_mib = scratch_limit_mib or None
        if mount_scratch is None:
            mount_scratch = bool(self.scratch_limit_mib) and scratch_quota.can_mount()
        self.mount_scratch = mount_scratch
        self.quotas: dict[str, scratch_quota.Quota] = {}

    def adopt(self) -> None:
        """Adopt what a previous runtime left: running tasks are watched, pending ones started later."""
        for record in self.ledger.tasks.values():
            if record.status == "running":
                log.info(
                    "task %s adopted from a previous runtime (pid %s)", task_id(record.task_arn), record.pid
                )

    def take_on(self) -> None:
        """Put the cluster's RUNNING tasks not in the ledger yet into it, as ``pending``."""
        arns: list[str] = []
        for page in self.ecs.get_paginator("list_tasks").paginate(
            cluster=self.cluster_arn, desiredStatus="RUNNING"
        ):
            arns.extend(arn for arn in page["taskArns"] if arn not in self.ledger.tasks)
        for start in range(0, len(arns), 100):
            for task in self.ecs.describe_tasks(cluster=self.cluster_arn, tasks=arns[start : start + 100])[
                "tasks"
            ]:
                record = TaskRecord(
                    task_arn=task["taskArn"],
                    status="pending",
                    created_at=now(),
                    task=json.loads(json.dumps(task, default=str)),
                )
                self.ledger.tasks[record.task_arn] = record
                log.info("task %s recorded (startedBy %s)", task_id(record.task_arn), task.get("startedBy"))
        if arns:
            self.ledger.save()

    def start_pending(self) -> None:
        """Start pending tasks, in the order they were taken on, while fewer than ``max_tasks`` run."""
        running = sum(1 for process in self.processes.values() if process.poll() is None)
        adopted = sum(
            1
            for arn, rec in self.ledger.tasks.items()
            if rec.status == "running" and arn not in self.processes
        )
        for record in list(self.ledger.tasks.values()):
            if running + adopted >= self.max_tasks:
                return
            if record.status == "pending":
                self.start(record)
                running += 1

    def start(self, record: TaskRecord) -> None:
        """Start ``record``'s task as :attr:`launcher` says, in its own process group, under a ``/bin/sh``
        that writes its exit code to ``tasks/<task-id>/exit_code``; stopped at once when the command is not
        found."""
        task_dir = self.tasks_dir / task_id(record.task_arn)
        container = self.container(record)
        _size_like_ecs(record.task, container.definition)
        quota = self.quota(record, container, start=True)
        container = dataclasses.replace(container, scratch_mib=quota.mib)
        launch = self.launcher(record, container, task_dir, self.aws_env)
        if not launch.argv or shutil.which(launch.argv[0], path=launch.env.get("PATH")) is None:
            self.stopped(
                record, None, f"CannotStartContainerError: command {launch.argv!r} not found locally"
            )
            return
        with open(task_dir / "task.log", "ab") as task_log:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _EXIT_WRAPPER, "q4-local-task", str(task_dir / "exit_code"), *launch.argv],
                env=launch.env,
                cwd=launch.cwd,
                stdout=task_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[record.task_arn] = process
        record.status, record.pid, record.started_at = "running", process.pid, now()
        record.pid_started = stack_state.process_start_stamp(process.pid)
        self.ledger.save()
        self.ship_logs(record)  # creates its stream, as the awslogs driver does when a container starts
        log.info("task %s started: %s (pid %d)", task_id(record.task_arn), " ".join(launch.argv), process.pid)

    def quota(
        self, record: TaskRecord, container: Container | None = None, start: bool = False
    ) -> scratch_quota.Quota:
        """The task's scratch quota; when ``start``, its scratch dir is made (a tmpfs of the quota's size
        where :attr:`mount_scratch`). An adopted task keeps the mount it has, if any."""
        quota = self.quotas.get(record.task_arn)
        if quota is None:
            definition = (container or self.container(record)).definition
            mib = scratch_quota.quota_mib(record.task, definition, self.scratch_limit_mib)
            scratch = self.tasks_dir / task_id(record.task_arn) / "scratch"
            quota = scratch_quota.prepare(scratch, mib, self.mount_scratch and start)
            self.quotas[record.task_arn] = quota
        return quota

    def enforce_quota(self, record: TaskRecord) -> None:
        """The watcher: stop a running task (SIGKILL to its process group) once its scratch dir holds more
        than its quota; a tmpfs quota needs no watching. Either way ``Utilized`` is refreshed."""
        if record.stop_code is not None:
            return
        task_dir = self.tasks_dir / task_id(record.task_arn)
        quota = self.quota(record)
        used = scratch_quota.usage_bytes(task_dir / "scratch")
        _report_utilized(task_dir, used)
        if quota.mounted or used <= quota.bytes:
            return
        record.stop_code, record.reason = (
            scratch_quota.EXHAUSTED_STOP_CODE,
            scratch_quota.exhausted_reason(used, quota),
        )
        self.ledger.save()
        log.warning("task %s stopped: %s", task_id(record.task_arn), record.reason)
        _end_container(record, force=True)

    def container(self, record: TaskRecord) -> Container:
        """The task's essential container (the first one when none is marked), with its overrides."""
        task = record.task
        definition = self.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
            "taskDefinition"
        ]
        container = next(
            (c for c in definition["containerDefinitions"] if c.get("essential", True)),
            definition["containerDefinitions"][0],
        )
        override: dict[str, Any] = next(
            (
                o
                for o in task.get("overrides", {}).get("containerOverrides", [])
                if o.get("name") == container["name"]
            ),
            {},
        )
        return Container(task=task, definition=definition, container=container, override=override)

    def notice_stops(self) -> None:
        """Tasks that ECS ``StopTask`` stopped while pending or running: a pending one is stopped without
        running; a running one's main process gets SIGTERM (as ECS sends the container), its process group
        SIGKILL once the container's ``stopTimeout`` has passed; :meth:`reap` then reports it."""
        live = [r for r in self.ledger.tasks.values() if r.status in ("pending", "running")]
        for start in range(0, len(live), 100):
            batch = live[start : start + 100]
            described = self.ecs.describe_tasks(cluster=self.cluster_arn, tasks=[r.task_arn for r in batch])
            tasks = {t["taskArn"]: t for t in described.get("tasks", [])}
            for record in batch:
                task = tasks.get(record.task_arn)
                if record.stop_code is None and task is not None and task.get("desiredStatus") == "STOPPED":
                    self._user_stop(record, str(task.get("stoppedReason") or "Task stopped by user"))
                elif record.stop_code == USER_INITIATED and record.status == "running" and _overdue(record):
                    log.info("task %s outlived its stopTimeout: SIGKILL", task_id(record.task_arn))
                    _end_container(record, force=True)

    def _user_stop(self, record: TaskRecord, reason: str) -> None:
        record.stop_code, record.reason = USER_INITIATED, reason
        if record.status == "pending":
            self.stopped(record, None, reason)
            return
        timeout = self.container(record).container.get("stopTimeout") or DEFAULT_STOP_TIMEOUT_S
        record.kill_at = time.time() + float(timeout)
        self.ledger.save()
        log.info("task %s stopped by StopTask (%s): SIGTERM", task_id(record.task_arn), reason)
        if record.task_arn in self.processes or _alive(record):
            _signal_main_process(record, signal.SIGTERM)

    def reap(self) -> None:
        """Mark the tasks whose main process ended ``exited``, with its exit code (128 + n for signal n)."""
        for arn, record in self.ledger.tasks.items():
            if record.status != "running":
                continue
            process = self.processes.get(arn)
            if process is not None:
                code = process.poll()
                if code is None:
                    self.enforce_quota(record)
                    self.ship_logs(record)
                    continue
                del self.processes[arn]
                _end_container(record)
                self.ship_logs(record, final=True)
                if record.stop_code == scratch_quota.EXHAUSTED_STOP_CODE:
                    self.stopped(record, None, str(record.reason))
                else:
                    self.stopped(record, code if code >= 0 else 128 - code, EXITED_REASON)
            elif _alive(record):
                self.enforce_quota(record)
                self.ship_logs(record)
            else:  # adopted from a previous runtime
                _end_container(record)
                self.ship_logs(record, final=True)
                exit_file = self.tasks_dir / task_id(arn) / "exit_code"
                if record.stop_code == scratch_quota.EXHAUSTED_STOP_CODE:
                    self.stopped(record, None, str(record.reason))
                elif exit_file.exists():
                    self.stopped(record, int(exit_file.read_text().strip()), EXITED_REASON)
                else:
                    self.stopped(record, None, LOST_REASON)

    def ship_logs(self, record: TaskRecord, final: bool = False) -> None:
        """Send the task's new output lines to its awslogs stream (all of it when ``final``); a failure is
        logged and retried on the next call (the lines stay in ``task.log`` either way)."""
        if self.logs is None:
            return
        try:
            if record.task_arn not in self.tails:
                self.tails[record.task_arn] = self._tail(record)
            tail = self.tails[record.task_arn]
            if tail is not None:
                tail.ship(final=final)
        except Exception as exc:  # logs are informative; the task's outcome never depends on them
            log.warning("could not ship the logs of task %s: %s", task_id(record.task_arn), exc)
        if final:
            self.tails.pop(record.task_arn, None)

    def _tail(self, record: TaskRecord) -> FileTail | None:
        destination = awslogs_destination(self.container(record).container, record.task_arn)
        if destination is None:
            return None
        task_log = self.tasks_dir / task_id(record.task_arn) / "task.log"
        stream = LogStream(self.logs, destination)
        try:
            stream.ensure()
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise  # retried on the next call
            log.warning(
                "task %s: its log group %s does not exist; output only in task.log",
                task_id(record.task_arn),
                destination.group,
            )
            return None
        return FileTail(task_log, stream)

    def stopped(self, record: TaskRecord, exit_code: int | None, reason: str) -> None:
        """Mark the task ``exited`` in the ledger and stopped in the emulator (a task stopped by StopTask
        keeps its reason; the emulator has it stopped already)."""
        user_stop = record.stop_code == USER_INITIATED
        reason = (record.reason or reason) if user_stop else reason
        record.status, record.exit_code, record.reason, record.stopped_at = "exited", exit_code, reason, now()
        self.ledger.save()
        # The task's volume goes with it.
        scratch_quota.release(self.tasks_dir / task_id(record.task_arn) / "scratch")
        self.quotas.pop(record.task_arn, None)
        log.info("task %s stopped: exit code %s (%s)", task_id(record.task_arn), exit_code, reason)
        if user_stop:
            return
        try:
            self.ecs.stop_task(cluster=self.cluster_arn, task=record.task_arn, reason=reason)
        except Exception as exc:  # the emulator's view is informative only; the event is what counts
            log.warning("could not mark task %s stopped in the emulator: %s", record.task_arn, exc)

    def shutdown(self, grace_s: float) -> None:
        """Stop the task processes this runtime started (their process groups): SIGTERM, then SIGKILL."""
        for process in self.processes.values():
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        for arn in self.processes:
            scratch_quota.release(self.tasks_dir / task_id(arn) / "scratch")


def task_metadata(container: Container) -> dict[str, Any]:
    """What the task metadata endpoint v4 answers at ``/task`` on Fargate (the fields Q4 reads, and a few
    more): ``Limits`` are the task size, CPU in vCPUs (units / 1024) and memory in MiB, and
    ``EphemeralStorageMetrics.Reserved`` the quota enforced on its scratch dir in MiB (``scratch_mib``; else
    its ephemeral storage: RunTask's task-level overrides where the task has them, else the task
    definition's, 20 GiB without either), ``Utilized`` what the dir holds (refreshed by the runtime)."""
    task, definition = container.task, container.definition
    overrides = task.get("overrides") or {}
    cpu = overrides.get("cpu") or definition.get("cpu") or task.get("cpu")
    memory = overrides.get("memory") or definition.get("memory") or task.get("memory")
    reserved = container.scratch_mib or scratch_quota.task_storage_mib(task, definition)
    return {
        "Cluster": task.get("clusterArn"),
        "TaskARN": task["taskArn"],
        "Family": definition.get("family"),
        "Revision": str(definition.get("revision", "")),
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "LaunchType": "FARGATE",
        "Limits": {
            "CPU": int(cpu) / 1024 if cpu else None,
            "Memory": int(memory) if memory else None,
        },
        "EphemeralStorageMetrics": {"Reserved": reserved, "Utilized": 0},
        # No "Image": a task run as a process ran no image (the image launcher adds the one it ran).
        "Containers": [{"Name": container.container.get("name")}],
    }


def _report_utilized(task_dir: Path, used: int) -> None:
    """Set ``EphemeralStorageMetrics.Utilized`` (MiB) in the task's metadata file when it changed (replaced
    atomically: a reader never sees half a document)."""
    path = task_dir / "metadata" / "task"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    metrics = document.setdefault("EphemeralStorageMetrics", {})
    mib = used // 1048576
    if metrics.get("Utilized") == mib:
        return
    metrics["Utilized"] = mib
    tmp = path.with_name("task.tmp")
    tmp.write_text(json.dumps(document, default=str))
    tmp.replace(path)


def _size_like_ecs(task: dict[str, Any], definition: dict[str, Any]) -> None:
    """Give the ledger's task entry the size ECS reports for a Fargate task (``cpu``, ``memory``,
    ``ephemeralStorage``: the overrides', else the definition's), which moto leaves out: its STOPPED event
    then carries them as ECS's does (the run's cost counts each attempt's size)."""
    overrides = task.get("overrides") or {}
    for key in ("cpu", "memory"):
        value = overrides.get(key) or definition.get(key)
        if not task.get(key) and value:
            task[key] = str(value)
    storage = overrides.get("ephemeralStorage") or definition.get("ephemeralStorage")
    if not task.get("ephemeralStorage") and storage:
        task["ephemeralStorage"] = dict(storage)


def _alive(record: TaskRecord) -> bool:
    if record.pid is None or record.pid_started is None:
        return False
    return stack_state.process_start_stamp(record.pid) == record.pid_started and not stack_state.is_zombie(
        record.pid
    )


def _overdue(record: TaskRecord) -> bool:
    return record.kill_at is not None and time.time() >= record.kill_at


def _signal_main_process(record: TaskRecord, sig: signal.Signals) -> None:
    """Signal the task's main process: the command under the ``/bin/sh`` exit-code wrapper (the group leader),
    as ECS signals a container's main process; the whole group when no such child is found."""
    assert record.pid is not None
    children = _children(record.pid)
    if not children:
        _signal_group(record.pid, sig)
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``; none found elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def _end_container(record: TaskRecord, force: bool = False) -> None:
    """A container stops when its main process does: kill whatever the task left in its process group.

    The recorded pid is the ``/bin/sh`` exit-code wrapper, the group's leader. If it alone was killed, the
    ``q4-task`` under it would go on writing to S3 while the orchestrator relaunches the run: two attempts
    at once, which Fargate never allows (ECS reports STOPPED only once the whole task is gone). Once the
    leader's pid is free again the group id is still unique to the task's processes; if the pid was reused
    by another process (a previous runtime's task, long gone) nothing is signalled.
    """
    if record.pid is None:
        return
    if force and _alive(record):
        _signal_group(record.pid, signal.SIGKILL)
        return
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        _signal_group(record.pid, signal.SIGKILL)
        return
    except PermissionError:
        return
    if stack_state.is_zombie(record.pid) or stack_state.process_start_stamp(record.pid) == record.pid_started:
        _signal_group(record.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
