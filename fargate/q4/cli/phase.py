"""Where a run is (``q4 status``'s phase) and what it cost (``q4 status`` / ``q4 runs``).

The phase comes from the run's documents (job.json, the launch records ``attempts/<n>.json``, MANIFEST.json,
ERROR.json), ECS (``ecs:DescribeTasks`` of the latest attempt's task: PENDING, RUNNING since ``startedAt``,
STOPPED) and the queues (a rejection on the done queue, letters in the DLQ: :mod:`q4.cli.status`):

``queued`` (inputs uploaded, no job.json: the work message waits for the orchestrator), ``rejected``,
``launching`` (accepted; no task yet, or ECS still provisioning it), ``running`` (since ECS's ``startedAt``),
``stopping`` / ``stopped`` (the attempt's task stops; the orchestrator relaunches it or ends the run),
``launched`` (ECS cannot be asked, or no longer knows the task), ``committed``
(MANIFEST.json), ``failed`` (ERROR.json); each with ``attempt n of m`` (m: ``Q4_MAX_ATTEMPTS``, default 3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from q4_contract import RunState, UnreadableDocument

from q4 import aws
from q4.cli.common import Pipeline

DEFAULT_MAX_ATTEMPTS = 3  # the orchestrator's default (Q4_MAX_ATTEMPTS)
LAUNCHING_STATUSES = ("PROVISIONING", "PENDING", "ACTIVATING")


def max_attempts(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        value = int(environ.get("Q4_MAX_ATTEMPTS", "") or DEFAULT_MAX_ATTEMPTS)
    except ValueError:
        return DEFAULT_MAX_ATTEMPTS
    return max(1, value)


def _cluster_of(task_arn: str) -> str | None:
    """The cluster of a task ARN (``arn:aws:ecs:<region>:<account>:task/<cluster>/<id>``), else
    ``Q4_CLUSTER``."""
    parts = task_arn.split(":", 5)[-1].split("/")
    if len(parts) == 3 and parts[0] == "task":
        return parts[1]
    return os.environ.get("Q4_CLUSTER") or None


def _ecs_task(task_arn: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(DescribeTasks entry or None, why ECS could not be asked or None)``."""
    cluster = _cluster_of(task_arn)
    try:
        ecs = aws.client("ecs")
        response = ecs.describe_tasks(**({"cluster": cluster} if cluster else {}), tasks=[task_arn])
    except (ClientError, BotoCoreError) as exc:
        return None, f"ECS DescribeTasks failed: {exc}"
    task = next((t for t in response.get("tasks") or [] if t.get("taskArn") == task_arn), None)
    return task, None


def _when(value: object) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value) if value else None


def phase(pipeline: Pipeline, state: RunState, rejected: bool = False) -> dict[str, Any]:
    """The run's phase: ``{phase, attempt, max_attempts, since?, task_arn?, ecs_status?, note?}``."""
    limit = max_attempts()
    attempt = state.attempts[-1] if state.attempts else None
    doc: dict[str, Any] = {"phase": None, "attempt": attempt, "max_attempts": limit}
    if state.state == "succeeded":
        return {**doc, "phase": "committed"}
    if state.state == "failed":
        return {**doc, "phase": "failed"}
    if state.state in ("submitted", "unknown"):
        return {**doc, "phase": "rejected" if rejected else "queued"}
    if attempt is None:
        return {**doc, "phase": "launching", "note": "accepted; the orchestrator has not started a task yet"}
    try:
        record = pipeline.store.attempt_record(state.run_id, attempt) or {}
    except UnreadableDocument:
        return {**doc, "phase": "launched", "note": f"the launch record of attempt {attempt} is unreadable"}
    task_arn = record.get("task_arn")
    doc.update(task_arn=task_arn, launched_at=record.get("launched_at"))
    if not isinstance(task_arn, str) or not task_arn:
        return {**doc, "phase": "launching", "note": "the launch record names no task"}
    task, problem = _ecs_task(task_arn)
    if problem is not None:
        return {**doc, "phase": "launched", "note": problem}
    if task is None:
        return {
            **doc,
            "phase": "launched",
            "note": "ECS no longer reports the task (it keeps stopped ones ~1 h)",
        }
    status = str(task.get("lastStatus") or "")
    doc["ecs_status"] = status
    if status in LAUNCHING_STATUSES:
        return {**doc, "phase": "launching"}
    if status == "RUNNING":
        started = _when(task.get("startedAt"))
        if started is None:  # moto gives none: the launch record's time, said so
            return {
                **doc,
                "phase": "running",
                "since": doc["launched_at"],
                "note": "launch time; ECS gave no startedAt",
            }
        return {**doc, "phase": "running", "since": started}
    return {
        **doc,
        "phase": "stopped",
        "since": _when(task.get("stoppedAt")),
        "note": task.get("stoppedReason"),
    }


def describe_phase(found: Mapping[str, Any]) -> str:
    """``running since 2026-…, attempt 1 of 3``: the phase as one line."""
    text = str(found.get("phase"))
    if found.get("since"):
        text += f" since {found['since']}"
    if found.get("attempt") is not None:
        text += f", attempt {found['attempt']} of {found['max_attempts']}"
    if found.get("ecs_status") and found.get("phase") not in ("running", "stopped", "stopping"):
        text += f" (ECS {found['ecs_status']})"
    if found.get("note"):
        text += f" ({found['note']})"
    return text


def cost_summary(document: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``cost`` of a MANIFEST.json / ERROR.json, without its per-attempt entries; None without one."""
    cost = (document or {}).get("cost")
    if not isinstance(cost, Mapping):
        return None
    return {key: value for key, value in cost.items() if key != "attempts"}


def describe_cost(cost: Mapping[str, Any] | None) -> str:
    """``$0.001234 (60 vCPU-s, 240 GB-s, 0 ephemeral GB-s beyond 20 GiB; us-east-1 X86_64 on-demand; prices
    of 2024-06)``."""
    if not cost:
        return "not recorded"
    prices = cost.get("prices") if isinstance(cost.get("prices"), Mapping) else {}
    assert isinstance(prices, Mapping)
    usd = cost.get("usd")
    head = f"${usd:.6f}" if isinstance(usd, int | float) else "unknown"
    usage = (
        f"{cost.get('vcpu_seconds')} vCPU-s, {cost.get('gb_seconds')} GB-s, "
        f"{cost.get('ephemeral_gb_seconds')} ephemeral GB-s beyond 20 GiB"
    )
    where = f"{prices.get('region')} {prices.get('architecture')} {prices.get('capacity')}"
    tail = f"; prices of {prices.get('as_of')}" + ("" if cost.get("complete", True) else "; incomplete")
    return f"{head} ({usage}; {where}{tail})"
