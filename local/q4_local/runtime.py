"""The local runtime: what AWS does around the deployed resources and the emulator cannot.

Three stand-ins, all configured from what Terraform deployed (one source of truth):

* **Event source mapping** — polls the mapping's SQS queue with the mapping's batch size, invokes the
  mapped function with an ``aws:sqs`` batch event, deletes what succeeded (honouring
  ``ReportBatchItemFailures`` partial batch responses) and leaves the rest to reappear after the
  queue's visibility timeout; the queue's redrive policy moves it to the DLQ after
  ``maxReceiveCount`` receives (the queue does that, here as on AWS).
* **Fargate** — runs each task that ``RunTask`` recorded in the cluster as a local process: the task
  definition's essential container (entry point + command), its environment plus the container
  overrides, the endpoint, credentials and region, ``Q4_TASK_ARN`` and a per-task scratch dir
  (``Q4_SCRATCH_DIR``, also standing in for the container's mount points). At most
  ``max_tasks`` run at once; the others wait as PROVISIONING tasks would.
* **EventBridge** — when a task process exits, builds the ``ECS Task State Change`` (STOPPED) event
  with the real exit code, marks the task stopped in the emulator, and delivers the event to the
  Lambda targets of every rule whose pattern matches (see :mod:`q4_local.event_pattern`), as an
  asynchronous invocation: 3 attempts in all, then, as Lambda does, to the function's dead-letter queue
  (its ``DeadLetterConfig``) with Lambda's message attributes; dropped (and logged) when it has none.

Which tasks ran is kept in ``ledger.json`` so that a restarted runtime neither reruns nor loses a
task: a task still running is adopted, a finished one has its exit code in its folder, a vanished
one is reported stopped without an exit code (a crash, which the orchestrator retries).

Run as ``python -m q4_local.runtime --state-dir DIR`` (``q4 local up`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from q4_local import event_pattern, lambda_host
from q4_local import state as stack_state

log = logging.getLogger("q4_local.runtime")

READY_FILE = "runtime.ready"
LOST_REASON = "Task process lost: the local runtime stopped while the task was running"
_EXIT_WRAPPER = 'f=$1; shift; "$@"; c=$?; echo "$c" > "$f"; exit "$c"'


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RuntimeConfig:
    """Where the runtime finds the deployment; everything else is read from the emulator."""

    state_dir: Path
    aws_env: dict[str, str]
    function_name: str
    cluster: str
    lambda_zips: dict[str, Path]
    max_tasks: int = 2
    poll_wait_s: int = 1

    @classmethod
    def from_stack(cls, directory: Path, max_tasks: int = 2) -> RuntimeConfig:
        stack = stack_state.load(directory)
        if stack is None:
            raise SystemExit(f"no local stack state in {directory}")
        return cls(
            state_dir=directory,
            aws_env=aws_env(stack.endpoint_url, stack.region),
            function_name=str(stack.outputs["orchestrator_function_name"]),
            cluster=str(stack.outputs["cluster_name"]),
            lambda_zips={name: Path(path) for name, path in stack.lambda_zips.items()},
            max_tasks=max_tasks,
        )


def aws_env(endpoint_url: str, region: str) -> dict[str, str]:
    """Variables pointing boto3 and the `aws` CLI at the emulator (also given to functions and tasks)."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@dataclass
class QueueMapping:
    """An enabled SQS event source mapping of the function, as deployed."""

    uuid: str
    queue_arn: str
    queue_url: str
    batch_size: int
    report_batch_item_failures: bool


@dataclass
class TaskRecord:
    """One ledger entry: a task the runtime has taken on."""

    task_arn: str
    status: str  # pending | running | exited | delivered | dead_lettered | undeliverable
    pid: int | None = None
    pid_started: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    delivery_attempts: int = 0
    task: dict[str, Any] = field(default_factory=dict)  # DescribeTasks entry when taken on
    # STOPPED events sent to a function's DLQ after their last failed attempt: function, queue, message_id,
    # request_id (the status is ``dead_lettered`` when every failed target's event got there)
    dead_letters: list[dict[str, str]] = field(default_factory=list)


class Ledger:
    """``ledger.json``: every task the runtime has taken on, saved after each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks: dict[str, TaskRecord] = {}
        if path.exists():
            for arn, entry in json.loads(path.read_text()).items():
                self.tasks[arn] = TaskRecord(**entry)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({arn: vars(rec) for arn, rec in self.tasks.items()}, indent=1))
        tmp.replace(self.path)


class LocalRuntime:
    """The event source mapping, Fargate and EventBridge stand-ins, driven by :meth:`tick`."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        env = config.aws_env
        session = boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        endpoint = env["AWS_ENDPOINT_URL"]
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.lambda_ = session.client("lambda", endpoint_url=endpoint)
        self.ecs = session.client("ecs", endpoint_url=endpoint)
        self.events = session.client("events", endpoint_url=endpoint)
        self.tasks_dir = config.state_dir / "tasks"
        self.invocation_log = config.state_dir / "lambda.log"
        self.runtime_dir = lambda_host.runtime_packages_dir(config.state_dir / "lambda")
        self.ledger = Ledger(config.state_dir / "ledger.json")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.functions: dict[str, lambda_host.DeployedFunction] = {}
        self.function = self._function(config.function_name)
        self.mappings = self._queue_mappings()
        self.cluster_arn = self.ecs.describe_clusters(clusters=[config.cluster])["clusters"][0]["clusterArn"]
        log.info(
            "function %s (handler %s, timeout %d s); %d queue mapping(s); cluster %s",
            self.function.name,
            self.function.handler,
            self.function.timeout_s,
            len(self.mappings),
            self.cluster_arn,
        )
        self._recover()

    # -- configuration, read from the deployment --------------------------------------------------------

    def _function(self, name_or_arn: str) -> lambda_host.DeployedFunction:
        name = name_or_arn.split(":function:")[-1].split(":")[0]
        if name not in self.functions:
            zip_path = self.config.lambda_zips.get(name)
            if zip_path is None:
                raise lambda_host.LambdaCodeError(
                    "lambda_code_missing", f"The local stack does not know the code zip of function {name}."
                )
            self.functions[name] = lambda_host.load_function(
                self.lambda_, name, zip_path, self.config.state_dir / "lambda"
            )
        return self.functions[name]

    def _queue_mappings(self) -> list[QueueMapping]:
        mappings = []
        pages = self.lambda_.get_paginator("list_event_source_mappings")
        # Filtered here by the mapping's function ARN: moto matches FunctionName literally (name vs ARN).
        for page in pages.paginate():
            for esm in page["EventSourceMappings"]:
                if esm.get("FunctionArn", "").split(":")[6:7] != [self.function.name]:
                    continue
                arn = esm.get("EventSourceArn", "")
                if not arn.startswith("arn:aws:sqs:") or esm.get("State", "Enabled") not in (
                    "Enabled",
                    "Enabling",
                ):
                    continue
                url = self._queue_url(arn)
                mappings.append(
                    QueueMapping(
                        uuid=esm["UUID"],
                        queue_arn=arn,
                        queue_url=url,
                        batch_size=int(esm.get("BatchSize", 10)),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in esm.get("FunctionResponseTypes", []),
                    )
                )
        return mappings

    def _queue_url(self, queue_arn: str) -> str:
        _, _, _, _, account, queue_name = queue_arn.split(":", 5)
        return str(self.sqs.get_queue_url(QueueName=queue_name, QueueOwnerAWSAccountId=account)["QueueUrl"])

    # -- the loop ---------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One round: reap finished tasks, deliver their events, take on new tasks, poll the queues."""
        self._reap()
        self._deliver_pending()
        self._take_on_new_tasks()
        self._start_pending()
        for mapping in self.mappings:
            self._poll(mapping)

    def run(self, stop: threading.Event, max_failed_ticks: int = 60) -> None:
        """Tick until ``stop`` is set, or until ``max_failed_ticks`` ticks in a row failed (emulator gone)."""
        failed = 0
        while not stop.is_set():
            try:
                self.tick()
                failed = 0
            except Exception:  # keep serving; the log says what went wrong
                failed += 1
                log.exception("runtime tick failed (%d in a row)", failed)
                if failed >= max_failed_ticks:
                    log.error("giving up after %d failed ticks in a row", failed)
                    break
                stop.wait(1.0)
        self.shutdown()

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop the task processes this runtime started (their process groups), then save the ledger."""
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
        self.ledger.save()

    # -- event source mapping ---------------------------------------------------------------------------

    def _poll(self, mapping: QueueMapping) -> None:
        response = self.sqs.receive_message(
            QueueUrl=mapping.queue_url,
            MaxNumberOfMessages=min(mapping.batch_size, 10),
            WaitTimeSeconds=self.config.poll_wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            return
        region = self.config.aws_env["AWS_REGION"]
        event = {"Records": [_sqs_record(message, mapping.queue_arn, region) for message in messages]}
        outcome = lambda_host.invoke(
            self.function,
            event,
            self.config.aws_env,
            runtime_dir=self.runtime_dir,
            log_path=self.invocation_log,
        )
        ids = [message["MessageId"] for message in messages]
        failed = self._failed_items(outcome, ids, mapping)
        done = [message for message in messages if message["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=mapping.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                    for i, message in enumerate(done)
                ],
            )
        log.info(
            "sqs batch of %d from %s: %d deleted, %d left for retry (%.2f s)%s",
            len(messages),
            mapping.queue_arn.rsplit(":", 1)[-1],
            len(done),
            len(failed),
            outcome.duration_s,
            f"; function error: {outcome.error}" if outcome.error else "",
        )

    @staticmethod
    def _failed_items(outcome: lambda_host.Invocation, ids: list[str], mapping: QueueMapping) -> set[str]:
        """Message ids to leave in the queue, by the rules of Lambda's partial batch responses."""
        if not outcome.ok:
            return set(ids)
        if not mapping.report_batch_item_failures or not isinstance(outcome.result, dict):
            return set()
        failures = outcome.result.get("batchItemFailures") or []
        named = {item.get("itemIdentifier") for item in failures if isinstance(item, dict)}
        if len(named) != len(failures) or not named <= set(ids):
            return set(ids)  # a malformed response fails the whole batch, as on AWS
        return {str(name) for name in named}

    # -- Fargate --------------------------------------------------------------------------------------

    def _take_on_new_tasks(self) -> None:
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
                    created_at=_now(),
                    task=json.loads(json.dumps(task, default=str)),
                )
                self.ledger.tasks[record.task_arn] = record
                log.info("task %s recorded (startedBy %s)", _task_id(record.task_arn), task.get("startedBy"))
        if arns:
            self.ledger.save()

    def _start_pending(self) -> None:
        running = sum(1 for process in self.processes.values() if process.poll() is None)
        adopted = sum(
            1
            for arn, rec in self.ledger.tasks.items()
            if rec.status == "running" and arn not in self.processes
        )
        for record in list(self.ledger.tasks.values()):
            if running + adopted >= self.config.max_tasks:
                return
            if record.status == "pending":
                self._start(record)
                running += 1

    def _start(self, record: TaskRecord) -> None:
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
        command = list(container.get("entryPoint") or []) + list(
            override.get("command") or container.get("command") or []
        )
        task_dir = self.tasks_dir / _task_id(record.task_arn)
        scratch = task_dir / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        environment = {item["name"]: item["value"] for item in container.get("environment", [])}
        environment.update({item["name"]: item["value"] for item in override.get("environment", [])})
        # The container's mount points (the scratch volume) become the task's local scratch dir.
        for mount in container.get("mountPoints", []):
            path = mount.get("containerPath")
            for key, value in environment.items():
                if path and (value == path or value.startswith(path.rstrip("/") + "/")):
                    environment[key] = str(scratch) + value[len(path.rstrip("/")) :]
        # The ECS agent's task metadata endpoint v4, as files: `q4-task` reads
        # `$ECS_CONTAINER_METADATA_URI_V4/task` (TaskARN, Limits) with urllib, which opens file:// URLs as it
        # opens the agent's http:// one.
        metadata = task_dir / "metadata"
        metadata.mkdir(exist_ok=True)
        (metadata / "task").write_text(json.dumps(_task_metadata(task, definition, container), default=str))
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
            "LANG": "C.UTF-8",
            "HOME": str(scratch),
            "MPLCONFIGDIR": str(scratch / ".matplotlib"),
            **environment,
            "ECS_CONTAINER_METADATA_URI_V4": metadata.as_uri(),
            **self.config.aws_env,
            "Q4_TASK_ARN": record.task_arn,
            "Q4_SCRATCH_DIR": str(scratch),
        }
        if not command or shutil.which(command[0], path=env["PATH"]) is None:
            self._stopped(record, None, f"CannotStartContainerError: command {command!r} not found locally")
            return
        exit_file = task_dir / "exit_code"
        with open(task_dir / "task.log", "ab") as task_log:
            process = subprocess.Popen(
                ["/bin/sh", "-c", _EXIT_WRAPPER, "q4-local-task", str(exit_file), *command],
                env=env,
                cwd=scratch,
                stdout=task_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[record.task_arn] = process
        record.status, record.pid, record.started_at = "running", process.pid, _now()
        record.pid_started = stack_state.process_start_stamp(process.pid)
        self.ledger.save()
        log.info("task %s started: %s (pid %d)", _task_id(record.task_arn), " ".join(command), process.pid)

    def _reap(self) -> None:
        for arn, record in self.ledger.tasks.items():
            if record.status != "running":
                continue
            process = self.processes.get(arn)
            if process is not None:
                code = process.poll()
                if code is None:
                    continue
                del self.processes[arn]
                _end_container(record)
                self._stopped(record, code if code >= 0 else 128 - code, "Essential container in task exited")
            elif not _alive(record):  # adopted from a previous runtime
                _end_container(record)
                exit_file = self.tasks_dir / _task_id(arn) / "exit_code"
                if exit_file.exists():
                    self._stopped(
                        record, int(exit_file.read_text().strip()), "Essential container in task exited"
                    )
                else:
                    self._stopped(record, None, LOST_REASON)

    def _stopped(self, record: TaskRecord, exit_code: int | None, reason: str) -> None:
        record.status, record.exit_code, record.reason, record.stopped_at = (
            "exited",
            exit_code,
            reason,
            _now(),
        )
        self.ledger.save()
        log.info("task %s stopped: exit code %s (%s)", _task_id(record.task_arn), exit_code, reason)
        try:
            self.ecs.stop_task(cluster=self.cluster_arn, task=record.task_arn, reason=reason)
        except Exception as exc:  # the emulator's view is informative only; the event is what counts
            log.warning("could not mark task %s stopped in the emulator: %s", record.task_arn, exc)

    def _recover(self) -> None:
        """Adopt what a previous runtime left: running tasks are watched, pending ones started later."""
        for record in self.ledger.tasks.values():
            if record.status == "running":
                log.info(
                    "task %s adopted from a previous runtime (pid %s)", _task_id(record.task_arn), record.pid
                )

    # -- EventBridge ----------------------------------------------------------------------------------

    def _deliver_pending(self) -> None:
        for record in self.ledger.tasks.values():
            if record.status == "exited":
                self._deliver(record)

    def _deliver(self, record: TaskRecord) -> None:
        event = self.stopped_event(record)
        targets = self._matching_lambda_targets(event)
        failed: list[tuple[str, lambda_host.Invocation | None]] = []  # (target, its failed invocation)
        for target_arn in targets:
            try:
                function = self._function(target_arn)
            except lambda_host.LambdaCodeError as exc:
                failed.append((target_arn, None))
                log.warning(
                    "STOPPED event of %s not sent to %s: %s",
                    _task_id(record.task_arn),
                    target_arn,
                    exc.message,
                )
                continue
            outcome = lambda_host.invoke(
                function,
                event,
                self.config.aws_env,
                runtime_dir=self.runtime_dir,
                log_path=self.invocation_log,
            )
            if not outcome.ok:
                failed.append((target_arn, outcome))
                log.warning(
                    "STOPPED event of %s to %s failed: %s",
                    _task_id(record.task_arn),
                    target_arn,
                    outcome.error,
                )
        record.delivery_attempts += 1
        if failed and record.delivery_attempts < 3:
            self.ledger.save()  # retried on the next tick, as Lambda retries asynchronous invocations
            return
        if not failed:
            record.status = "delivered" if targets else "undeliverable"
        else:
            dead_lettered = [self._dead_letter(record, event, target, outcome) for target, outcome in failed]
            record.status = "dead_lettered" if all(dead_lettered) else "undeliverable"
        self.ledger.save()
        log.info(
            "task %s STOPPED event (exit code %s) %s: delivered to %d target(s)%s",
            _task_id(record.task_arn),
            record.exit_code,
            record.status,
            len(targets) - len(failed),
            "" if targets else ": no rule matched",
        )

    def _dead_letter(
        self,
        record: TaskRecord,
        event: dict[str, Any],
        target_arn: str,
        failed: lambda_host.Invocation | None,
    ) -> bool:
        """After the last failed attempt: send ``event`` to the target function's dead-letter queue, as Lambda
        does with an asynchronous event. False (and logged) when it stays undelivered."""
        task = _task_id(record.task_arn)
        attempts = record.delivery_attempts
        if failed is None:  # the function's code is not available locally: a broken local stack, not Lambda
            log.error(
                "STOPPED event of %s to %s dropped after %d attempts: the function's code is not available "
                "locally (see above); the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
            )
            return False
        try:
            queue_arn = lambda_host.dead_letter_target(self.lambda_, target_arn)
        except Exception as exc:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and was NOT dead-lettered: cannot read the "
                "function's DeadLetterConfig (%s); the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
                exc,
            )
            return False
        if queue_arn is None:
            log.warning(
                "STOPPED event of %s to %s dropped after %d failed attempts: the function has no "
                "dead-letter queue (Lambda discards such events too)",
                task,
                target_arn,
                attempts,
            )
            return False
        if queue_arn.split(":")[2:3] != ["sqs"]:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and was NOT dead-lettered: its dead-letter "
                "target %s is not an SQS queue (the local runtime sends to SQS only); the ledger keeps it "
                "undeliverable",
                task,
                target_arn,
                attempts,
                queue_arn,
            )
            return False
        body, attributes = lambda_host.dead_letter_message(event, failed)
        try:
            sent = self.sqs.send_message(
                QueueUrl=self._queue_url(queue_arn), MessageBody=body, MessageAttributes=attributes
            )
        except Exception as exc:
            log.error(
                "STOPPED event of %s to %s failed %d attempts and could NOT be sent to its dead-letter "
                "queue %s: %s; the ledger keeps it undeliverable",
                task,
                target_arn,
                attempts,
                queue_arn,
                exc,
            )
            return False
        record.dead_letters.append(
            {
                "function": target_arn,
                "queue": queue_arn,
                "message_id": str(sent["MessageId"]),
                "request_id": failed.request_id,
            }
        )
        log.warning(
            "STOPPED event of %s to %s failed %d attempts (last: %s); sent to the function's dead-letter "
            "queue %s (message %s)",
            task,
            target_arn,
            attempts,
            failed.error,
            queue_arn,
            sent["MessageId"],
        )
        return True

    def _matching_lambda_targets(self, event: dict[str, Any]) -> list[str]:
        matched: list[str] = []
        for page in self.events.get_paginator("list_rules").paginate():
            for rule in page["Rules"]:
                if rule.get("State") != "ENABLED" or not rule.get("EventPattern"):
                    continue
                try:
                    if not event_pattern.matches(json.loads(rule["EventPattern"]), event):
                        continue
                except event_pattern.UnsupportedPattern as exc:
                    log.warning("rule %s skipped: %s", rule["Name"], exc)
                    continue
                targets = self.events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
                matched.extend(t["Arn"] for t in targets if ":lambda:" in t["Arn"])
        return matched

    def stopped_event(self, record: TaskRecord) -> dict[str, Any]:
        """The ``ECS Task State Change`` event EventBridge would carry for this stopped task."""
        task = record.task
        account = record.task_arn.split(":")[4]
        container: dict[str, Any] = {
            "containerArn": f"{self.cluster_arn.replace(':cluster/', ':container/')}/{uuid.uuid4()}",
            "lastStatus": "STOPPED",
            "name": next(iter(c.get("name") for c in task.get("containers", [])), None) or "q4",
            "taskArn": record.task_arn,
        }
        if record.exit_code is not None:
            container["exitCode"] = record.exit_code
        else:
            container["reason"] = record.reason
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": account,
            "time": record.stopped_at or _now(),
            "region": self.config.aws_env["AWS_REGION"],
            "resources": [record.task_arn],
            "detail": {
                "clusterArn": self.cluster_arn,
                "taskArn": record.task_arn,
                "taskDefinitionArn": task.get("taskDefinitionArn"),
                "containers": [container],
                "overrides": task.get("overrides", {}),
                "startedBy": task.get("startedBy"),
                "group": task.get("group"),
                "launchType": task.get("launchType", "FARGATE"),
                "cpu": task.get("cpu"),
                "memory": task.get("memory"),
                "lastStatus": "STOPPED",
                "desiredStatus": "STOPPED",
                "stopCode": "EssentialContainerExited"
                if record.exit_code is not None
                else "TaskFailedToStart",
                "stoppedReason": record.reason,
                "createdAt": record.created_at,
                "startedAt": record.started_at,
                "stoppingAt": record.stopped_at,
                "stoppedAt": record.stopped_at,
                "version": 3,
            },
        }


def _sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of the ``aws:sqs`` event Lambda builds from a received message."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


def _alive(record: TaskRecord) -> bool:
    if record.pid is None or record.pid_started is None:
        return False
    return stack_state.process_start_stamp(record.pid) == record.pid_started and not stack_state.is_zombie(
        record.pid
    )


def _task_metadata(
    task: dict[str, Any], definition: dict[str, Any], container: dict[str, Any]
) -> dict[str, Any]:
    """What the task metadata endpoint v4 answers at ``/task`` on Fargate (the fields Q4 reads, and a few
    more): ``Limits`` are the task size, CPU in vCPUs (units / 1024) and memory in MiB."""
    cpu = definition.get("cpu") or task.get("cpu")
    memory = definition.get("memory") or task.get("memory")
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
        "Containers": [{"Name": container.get("name"), "Image": container.get("image")}],
    }


def _end_container(record: TaskRecord) -> None:
    """A container stops when its main process does: kill whatever the task left in its process group.

    The recorded pid is the ``/bin/sh`` exit-code wrapper, the group's leader. If it alone was killed, the
    ``q4-task`` under it would go on writing to S3 while the orchestrator relaunches the run: two attempts
    at once, which Fargate never allows (ECS reports STOPPED only once the whole task is gone). Once the
    leader's pid is free again the group id is still unique to the task's processes; if the pid was reused
    by another process (a previous runtime's task, long gone) nothing is signalled.
    """
    if record.pid is None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m q4_local.runtime", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--max-tasks", type=int, default=2, help="task processes run at once (default 2)")
    args = parser.parse_args(argv)
    directory = args.state_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime = LocalRuntime(RuntimeConfig.from_stack(directory, max_tasks=args.max_tasks))
    (directory / READY_FILE).write_text(str(os.getpid()))
    log.info("local runtime ready (pid %d)", os.getpid())
    runtime.run(stop)
    log.info("local runtime stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
