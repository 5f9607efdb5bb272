"""The ``cost`` the task writes into MANIFEST.json and ERROR.json (docs/contract.md, "Cost").

The attempt that commits is still running, so its billed time is its own clock: from the image pull's start
when the task metadata endpoint says it (``PullStartedAt``, where Fargate's billing starts), else from this
process's start, up to now. Earlier attempts have stopped: their ECS times are in the orchestrator's
``attempts/<n>.stopped.json``. Prices and arithmetic are :mod:`q4_contract.cost`'s.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from q4_contract import cost as costs

#: When this process started (q4.task imports this module first thing): the task's clock without metadata.
PROCESS_STARTED = time.time()

logger = logging.getLogger("q4.cost")


def _metadata(environ: Mapping[str, str]) -> dict[str, Any]:
    uri = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return {}
    try:
        with urllib.request.urlopen(f"{uri}/task", timeout=2) as response:
            meta = json.loads(response.read())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _ephemeral_gib(meta: Mapping[str, Any]) -> float | None:
    """The task's ephemeral storage in GiB: the metadata's ``EphemeralStorageMetrics.Reserved`` (MiB)."""
    metrics = meta.get("EphemeralStorageMetrics")
    reserved = metrics.get("Reserved") if isinstance(metrics, Mapping) else None
    if isinstance(reserved, int | float) and not isinstance(reserved, bool) and reserved > 0:
        return float(round(reserved / 1024))
    return None


def this_attempt(
    environ: Mapping[str, str], attempt: int, compute: Mapping[str, Any], now: float | None = None
) -> dict[str, Any]:
    """The usage entry of the running attempt, measured by its own clock up to ``now``."""
    meta = _metadata(environ)
    pulled = costs.parse_time(meta.get("PullStartedAt"))
    start = pulled.timestamp() if pulled is not None else PROCESS_STARTED
    seconds = max(0.0, (time.time() if now is None else now) - start)
    entry = costs.usage(
        attempt,
        seconds=seconds,
        source="task_clock",
        vcpu=_float(compute.get("cpu")),
        memory_mib=_float(compute.get("memory")),
        ephemeral_gib=_ephemeral_gib(meta),
        task_arn=compute.get("task_arn"),
    )
    entry["started_from"] = "PullStartedAt" if pulled is not None else "process_start"
    return entry


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def task_cost(
    store: Any,
    run_id: str,
    attempt: int,
    compute: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    earlier: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any] | None:
    """The run's ``cost`` as this attempt ends it: earlier attempts (ECS) plus this one (its clock); None
    when it cannot be worked out (the run still ends; the cost is an account, not a step of the run).
    ``earlier``: the earlier attempts' usage entries (a sharded run's every step), instead of the run's
    ``attempts/<n>.stopped.json``."""
    environ = os.environ if environ is None else environ
    compute = compute or {}
    try:
        region = (
            costs.region_of_arn(str(compute.get("task_arn") or ""))
            or environ.get("AWS_REGION")
            or environ.get("AWS_DEFAULT_REGION")
        )
        prices = costs.prices_for(
            region,
            costs.architecture_name(platform.machine()),
            price_region=environ.get("Q4_PRICE_REGION") or None,
        )
        attempts = (
            earlier() if earlier is not None else costs.earlier_attempts(store, run_id, range(1, attempt))
        )
        return costs.run_cost([*attempts, this_attempt(environ, attempt, compute)], prices)
    except Exception as exc:  # S3 trouble reading an earlier record must not stop a finished run's commit
        logger.warning("Could not work out the run's cost.", extra={"error": str(exc)})
        return None
