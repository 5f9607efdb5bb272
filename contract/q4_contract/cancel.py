"""Cancelling a run (docs/contract.md, "Cancel"): the cancel request ``run=<id>/cancel.json`` and the
ERROR.json (code ``cancelled``) the orchestrator writes for a cancelled run.

A cancel request is data, written once (``If-None-Match: *``) by ``q4 cancel``; it never ends a run by
itself. The orchestrator ends the run when nothing of it is running: when the run's work message arrives
before any attempt was launched, or when the STOPPED event of its latest attempt arrives and the task did
not commit. The task reads the request before it starts and again just before its commit, and exits
without committing when it finds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from q4_contract.done import error_document
from q4_contract.keys import cancel_key
from q4_contract.store import RunDocuments

CANCEL_SCHEMA = "q4.cancel/v1"
CANCELLED = "cancelled"
#: The ECS stop code of a task stopped by StopTask (``q4 cancel``), as the STOPPED event carries it.
USER_INITIATED = "UserInitiated"


def cancel_request(run_id: str, *, requested_at: str, requested_by: str | None = None) -> dict[str, Any]:
    """The document ``q4 cancel`` writes once at ``run=<id>/cancel.json``."""
    return {
        "schema": CANCEL_SCHEMA,
        "run_id": run_id,
        "requested_at": requested_at,
        "requested_by": requested_by,
    }


def cancel_requested(store: RunDocuments, run_id: str) -> dict[str, Any] | None:
    """The run's cancel request, or None when nobody asked to cancel it."""
    return store.read_json(cancel_key(run_id))


def cancelled_error(
    *,
    run_id: str,
    mode: str | None,
    attempts: int,
    request: Mapping[str, Any],
    details: Mapping[str, Any] | None = None,
    job: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ERROR.json of a cancelled run (written by the orchestrator); ``attempts``: attempts launched."""
    requested_at = request.get("requested_at")
    doc = error_document(
        run_id=run_id,
        code="cancelled",
        mode=mode,
        attempts=attempts,
        message=f"The run was cancelled (q4 cancel, requested at {requested_at}); nothing was committed. "
        "Submit the job again under a new run id to run it.",
        details={
            "requested_at": requested_at,
            "requested_by": request.get("requested_by"),
            **(details or {}),
        },
        retryable=True,
    )
    if attempts == 0:
        doc["attempt"] = None  # no task was launched
    if job is not None:
        doc["job"] = dict(job)
    return doc
