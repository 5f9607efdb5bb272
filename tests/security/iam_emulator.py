"""moto server for the least-privilege tests: ``python tests/security/iam_emulator.py -H HOST -p PORT``.

The same server as the local stack (``q4_local.moto_launcher``: its SQS poller switched off, the redrive
allow policy readable, bucket policies evaluated with ``aws:SecureTransport = true``) plus one fidelity fix
for IAM enforcement: moto authorizes every ECS call against the resource ``*``, so an identity policy that
scopes ``ecs:RunTask`` to a task definition family (as ours does, and as AWS evaluates it) never matches and
RunTask is always denied. Here RunTask is authorized against the ARN of the task definition it names, and
DescribeTasks of a single task ARN and StopTask against that task ARN: the resources AWS uses. Nothing is
loosened: every other ECS action is still checked against ``*`` and is therefore denied to a role whose ECS
statements name resources.

IAM enforcement itself is switched on at run time through moto's ``/moto-api/reset-auth`` (the test deploys
and prepares the stack first, unauthenticated, then enforces every later request).
"""

from __future__ import annotations

import sys
from typing import Any


def authorize_run_task_on_its_task_definition() -> None:
    """RunTask against its task definition's ARN, DescribeTasks (of one task ARN) against that ARN."""
    from moto.ecs.responses import EC2ContainerServiceResponse

    def _determine_resource(self: Any) -> str:
        if self._get_action() == "DescribeTasks":
            tasks = self._get_param("tasks") or []
            # AWS authorizes each task ARN; the orchestrator names one. A bare id or a list stays "*".
            return str(tasks[0]) if len(tasks) == 1 and str(tasks[0]).startswith("arn:") else "*"
        if self._get_action() == "StopTask":  # q4 cancel: AWS authorizes the task ARN
            task = str(self._get_param("task") or "")
            return task if task.startswith("arn:") else "*"
        if self._get_action() != "RunTask":
            return "*"
        name = self._get_param("taskDefinition")
        try:
            return str(self.ecs_backend.describe_task_definition(name).arn)
        except Exception:  # an unknown task definition: RunTask itself reports it
            return "*"

    EC2ContainerServiceResponse._determine_resource = _determine_resource  # type: ignore[attr-defined]


def main() -> None:
    from q4_local import moto_launcher

    moto_launcher.disable_builtin_sqs_lambda_poller()
    moto_launcher.support_redrive_allow_policy()
    moto_launcher.loopback_is_secure_transport()
    authorize_run_task_on_its_task_definition()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
