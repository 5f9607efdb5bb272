"""A toy Fargate task definition in the moto server, and RunTask of it: the local Fargate stand-in's tests
(tests/local) run small Python programs as tasks instead of q4-task.

The definition has one essential container ``app`` that runs ``python -c PROGRAM``; a task's environment
comes from the container overrides.
"""

from __future__ import annotations

import time
from typing import Any

import boto3

#: The name of the toy definition's one container.
CONTAINER = "app"


def register(
    program: str, prefix: str = "toy", *, task: dict[str, Any] | None = None, **container: Any
) -> str:
    """Register a FARGATE task definition (256 CPU units, 512 MiB) whose container runs ``python -c
    program``, in a family ``<prefix>-<unique>``; ``container`` adds to (or replaces) the container's
    fields, ``task`` to the definition's (``ephemeralStorage``, ...). Returns its ARN."""
    definition = boto3.client("ecs").register_task_definition(
        family=f"{prefix}-{time.monotonic_ns()}",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": f"{prefix}:latest",
                "memory": 512,
                "essential": True,
                "command": ["python", "-c", program],
                **container,
            }
        ],
        **(task or {}),
    )
    return str(definition["taskDefinition"]["taskDefinitionArn"])


def network() -> dict[str, Any]:
    """An ``awsvpcConfiguration`` of the emulator's default subnet and security group."""
    ec2 = boto3.client("ec2")
    return {
        "subnets": [ec2.describe_subnets()["Subnets"][0]["SubnetId"]],
        "securityGroups": [ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]],
    }


def run(cluster: str, definition: str, env: dict[str, str] | None = None, **overrides: Any) -> str:
    """RunTask of ``definition`` in ``cluster`` with ``env`` in the container overrides and ``overrides``
    (task-level: ``ephemeralStorage``, ``cpu``, ...); returns the task's ARN."""
    environment = [{"name": name, "value": value} for name, value in (env or {}).items()]
    (task,) = boto3.client("ecs").run_task(
        cluster=cluster,
        taskDefinition=definition,
        launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": network()},
        overrides={"containerOverrides": [{"name": CONTAINER, "environment": environment}], **overrides},
    )["tasks"]
    return str(task["taskArn"])
