"""The local runtime: what AWS does around the deployed resources and the emulator cannot.

Three stand-ins, each in its own module, all configured from what Terraform deployed (one source of
truth), composed here and driven by :meth:`LocalRuntime.tick`:

* **Event source mapping** (:mod:`q4_local.event_source`) — polls the function's SQS mappings, invokes
  it with batches, deletes what succeeded (partial batch responses honoured).
* **Fargate** (:mod:`q4_local.fargate`) — runs each task that ``RunTask`` recorded in the cluster as a
  local process (:func:`q4_local.fargate.task_launch`), at most ``max_tasks`` at once; enforces each one's
  ephemeral storage on its scratch dir (:mod:`q4_local.scratch`); reaps them; ships their output to
  CloudWatch Logs as their task definition says.
* **EventBridge** (:mod:`q4_local.eventbridge`) — delivers each stopped task's ``ECS Task State Change``
  event to the matching rules' Lambda targets as an asynchronous invocation (retries, dead-letter queue).

The functions run as on Lambda (:mod:`q4_local.lambda_host`), logging to their log groups. Which tasks ran
is kept in ``ledger.json`` (:mod:`q4_local.ledger`) so that a restarted runtime neither reruns nor loses
a task.

Run as ``python -m q4_local.runtime --state-dir DIR`` (``q4 local up`` does).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from q4_local import image_task, lambda_host
from q4_local import state as stack_state
from q4_local.clients import Clients
from q4_local.event_source import EventSourceMapping, QueueMapping
from q4_local.eventbridge import EventBridge
from q4_local.fargate import LOST_REASON, Fargate, TaskLauncher, task_launch
from q4_local.ledger import Ledger, TaskRecord

__all__ = [
    "LOST_REASON",
    "READY_FILE",
    "LocalRuntime",
    "QueueMapping",
    "RuntimeConfig",
    "TaskRecord",
    "aws_env",
    "main",
]

log = logging.getLogger("q4_local.runtime")

READY_FILE = "runtime.ready"


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
    scratch_limit_mib: int | None = None  # `q4 local up --scratch-limit-mib`: caps every task's scratch quota

    @classmethod
    def from_stack(cls, directory: Path, max_tasks: int = 2) -> RuntimeConfig:
        stack = stack_state.load(directory)
        if stack is None:
            raise SystemExit(f"no local stack state in {directory}")
        return cls(
            state_dir=directory,
            aws_env={**aws_env(stack.endpoint_url, stack.region), "Q4_PRICE_REGION": PRICE_REGION},
            function_name=str(stack.outputs["orchestrator_function_name"]),
            cluster=str(stack.outputs["cluster_name"]),
            lambda_zips={name: Path(path) for name, path in stack.lambda_zips.items()},
            max_tasks=max_tasks,
            scratch_limit_mib=stack.scratch_limit_mib,
        )


#: The local stack runs in a stand-in region (docs/design.md); its runs are priced as if they ran here.
PRICE_REGION = "us-east-1"


def aws_env(endpoint_url: str, region: str) -> dict[str, str]:
    """Variables pointing boto3 and the `aws` CLI at the emulator (also given to functions and tasks)."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


class LocalRuntime:
    """The event source mapping, Fargate and EventBridge stand-ins on one ledger, driven by :meth:`tick`."""

    def __init__(self, config: RuntimeConfig, launcher: TaskLauncher = task_launch) -> None:
        """``launcher`` says how a task's process is made (see :func:`q4_local.fargate.task_launch`)."""
        self.config = config
        env, region = config.aws_env, config.aws_env["AWS_REGION"]
        clients = Clients.of(env)
        self.ledger = Ledger(config.state_dir / "ledger.json")
        self.functions = lambda_host.Functions(
            clients.lambda_,
            config.lambda_zips,
            config.state_dir / "lambda",
            env,
            config.state_dir / "lambda.log",
            logs=clients.logs,
        )
        self.function = self.functions.get(config.function_name)
        self.event_source = EventSourceMapping(
            clients.sqs, clients.lambda_, self.functions, self.function, region, config.poll_wait_s
        )
        cluster_arn = clients.ecs.describe_clusters(clusters=[config.cluster])["clusters"][0]["clusterArn"]
        self.fargate = Fargate(
            clients.ecs,
            cluster_arn,
            self.ledger,
            config.state_dir / "tasks",
            env,
            config.max_tasks,
            launcher,
            logs=clients.logs,
            scratch_limit_mib=config.scratch_limit_mib,
        )
        self.eventbridge = EventBridge(
            clients.events, clients.lambda_, clients.sqs, self.functions, self.ledger, cluster_arn, region
        )
        log.info(
            "function %s (handler %s, timeout %d s); %d queue mapping(s); cluster %s",
            self.function.name,
            self.function.handler,
            self.function.timeout_s,
            len(self.mappings),
            cluster_arn,
        )
        self.fargate.adopt()

    @property
    def mappings(self) -> list[QueueMapping]:
        """The function's SQS event source mappings the runtime polls."""
        return self.event_source.mappings

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The task processes this runtime started, by task ARN, until reaped."""
        return self.fargate.processes

    @property
    def runtime_dir(self) -> Path:
        """The Lambda runtime's packages (boto3 and its dependencies) put on the functions' path."""
        return self.functions.runtime_dir

    @property
    def invocation_log(self) -> Path:
        """``lambda.log``: what the functions printed."""
        return self.functions.log_path

    def stopped_event(self, record: TaskRecord) -> dict[str, Any]:
        """The ``ECS Task State Change`` event of a stopped task (see :meth:`EventBridge.stopped_event`)."""
        return self.eventbridge.stopped_event(record)

    def tick(self) -> None:
        """One round: stop what StopTask stopped, reap finished tasks, deliver their events, take on new
        tasks, poll the queues."""
        self.fargate.notice_stops()
        self.fargate.reap()
        self.eventbridge.deliver_pending()
        self.fargate.take_on()
        self.fargate.start_pending()
        self.event_source.poll()

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
        self.fargate.shutdown(grace_s)
        self.ledger.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m q4_local.runtime", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--max-tasks", type=int, default=2, help="task processes run at once (default 2)")
    parser.add_argument("--task-image", help="run each task inside this local image (q4_local.image_task)")
    args = parser.parse_args(argv)
    directory = args.state_dir.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    image = image_task.prepare(args.task_image) if args.task_image else None
    launcher = image_task.image_launcher(image) if image else task_launch
    runtime = LocalRuntime(RuntimeConfig.from_stack(directory, max_tasks=args.max_tasks), launcher)
    (directory / READY_FILE).write_text(str(os.getpid()))
    log.info("local runtime ready (pid %d)", os.getpid())
    try:
        runtime.run(stop)
    finally:
        if image is not None:
            image_task.release(image)
    log.info("local runtime stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
