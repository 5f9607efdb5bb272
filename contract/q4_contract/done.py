"""Done messages (``q4.done/v1``; docs/contract.md, "Done message") and the orchestrator's ERROR.json.

A succeeded done message is derived from MANIFEST.json alone and a failed one from ERROR.json alone, so a
re-sent copy carries the same content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from q4_contract.cost import cost_usd as _cost_usd
from q4_contract.errors import Rejection
from q4_contract.job import DEFAULT_MODE, MODES, is_valid_run_id
from q4_contract.keys import manifest_key, run_prefix

DONE_SCHEMA = "q4.done/v1"
ERROR_SCHEMA = "q4.error/v1"
STATUSES = ("succeeded", "failed", "rejected")


def done_message(
    *,
    run_id: str | None,
    status: str,
    mode: str | None,
    artifacts_bucket: str,
    manifest: str | None = None,
    rows: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    attempt: int | None = None,
    duration_s: float | None = None,
    duplicate: bool = False,
    cost_usd: float | None = None,
) -> dict[str, Any]:
    """A ``q4.done/v1`` message (docs/contract.md, "Done message")."""
    doc: dict[str, Any] = {
        "schema": DONE_SCHEMA,
        "run_id": run_id,
        "status": status,
        "mode": mode,
        "artifacts_bucket": artifacts_bucket,
        "artifacts_prefix": run_prefix(run_id) if run_id and is_valid_run_id(run_id) else None,
        "attempt": attempt,
        "duration_s": duration_s,
        "duplicate": duplicate,
        "cost_usd": cost_usd,
    }
    if status == "succeeded":
        doc["manifest_key"] = manifest
        doc["rows"] = dict(rows or {})
    else:
        doc["error"] = {"code": (error or {}).get("code"), "message": (error or {}).get("message")}
    return doc


def succeeded_done(
    manifest: Mapping[str, Any], artifacts_bucket: str, *, duplicate: bool = False
) -> dict[str, Any]:
    """The succeeded done message, derived from MANIFEST.json alone (a re-sent copy is identical)."""
    run_id = str(manifest["run_id"])
    duration = _duration_of(manifest)
    return done_message(
        run_id=run_id,
        status="succeeded",
        mode=manifest.get("mode"),
        artifacts_bucket=artifacts_bucket,
        manifest=manifest_key(run_id),
        rows=manifest.get("rows") or {},
        attempt=_attempt_of(manifest),
        duration_s=duration,
        duplicate=duplicate,
        cost_usd=_cost_usd(manifest),
    )


def failed_done(
    error_doc: Mapping[str, Any], artifacts_bucket: str, *, mode: str | None = None, duplicate: bool = False
) -> dict[str, Any]:
    """The failed done message, derived from ERROR.json alone (plus the job's mode when known)."""
    return done_message(
        run_id=str(error_doc["run_id"]),
        status="failed",
        mode=_mode_of(error_doc) or mode,
        artifacts_bucket=artifacts_bucket,
        error=error_doc,
        attempt=_attempt_of(error_doc),
        duration_s=_duration_of(error_doc),
        duplicate=duplicate,
        cost_usd=_cost_usd(error_doc),
    )


def rejected_done(rejection: Rejection, artifacts_bucket: str, *, mode: str | None = None) -> dict[str, Any]:
    return done_message(
        run_id=rejection.run_id,
        status="rejected",
        mode=mode,
        artifacts_bucket=artifacts_bucket,
        error={"code": rejection.code, "message": rejection.message},
    )


def _mode_of(doc: Mapping[str, Any]) -> str | None:
    if isinstance(doc.get("mode"), str):
        return str(doc["mode"])
    job = doc.get("job")
    if isinstance(job, Mapping) and isinstance(job.get("mode"), str):
        return str(job["mode"])
    return None


def _duration_of(doc: Mapping[str, Any]) -> float | None:
    """``duration_s``, else the ``total`` of ``timings``, else the sum of the stage timings."""
    if isinstance(doc.get("duration_s"), int | float):
        return float(doc["duration_s"])
    timings = doc.get("timings")
    if not isinstance(timings, Mapping) or not timings:
        return None
    if isinstance(timings.get("total"), int | float):
        return round(float(timings["total"]), 3)
    return round(sum(float(v) for v in timings.values() if isinstance(v, int | float)), 3)


def _attempt_of(doc: Mapping[str, Any]) -> int | None:
    for name in ("attempt", "attempts"):
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    compute = doc.get("compute")
    if isinstance(compute, Mapping) and isinstance(compute.get("attempt"), int):
        return int(compute["attempt"])
    return None


def error_document(
    *,
    run_id: str,
    code: str,
    message: str,
    mode: str | None,
    attempts: int,
    details: Mapping[str, Any] | None = None,
    retryable: bool = False,
) -> dict[str, Any]:
    """An ERROR.json (``q4.error/v1``) written by the orchestrator (``task_crashed``)."""
    return {
        "schema": ERROR_SCHEMA,
        "run_id": run_id,
        "status": "failed",
        "mode": mode,
        "code": code,
        "message": message,
        "details": dict(details or {}),
        "retryable": retryable,
        "attempts": attempts,
        "attempt": attempts,
    }


# ---------------------------------------------------------------- what the work queue carries


def task_state_change(body: str | bytes) -> dict[str, Any] | None:
    """The ECS Task State Change event a work-queue message carries (redriven from the DLQ), or None."""
    try:
        message = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if (
        isinstance(message, dict)
        and message.get("source") == "aws.ecs"
        and message.get("detail-type") == "ECS Task State Change"
    ):
        return message
    return None


def mode_hint(body: str | bytes) -> str | None:
    """The mode a rejected work message asked for (the default when it names none), if it is a valid one;
    the rejection's done message carries it."""
    try:
        message = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    mode = message.get("mode", DEFAULT_MODE)
    return mode if isinstance(mode, str) and mode in MODES else None
