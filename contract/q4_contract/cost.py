"""What a run cost on Fargate (docs/contract.md, "Cost"): usage per attempt times a committed price table.

Pure functions over plain data (no AWS calls): the task builds the ``cost`` of MANIFEST.json / ERROR.json, the
orchestrator the ``cost`` of a ``task_crashed`` ERROR.json, from

- the price table ``fargate_prices.json`` (on-demand Linux, per region and architecture, with its date and
  source: refresh it from the source page);
- one usage entry per attempt: the billed time of a stopped attempt is ECS's (the STOPPED event's
  ``pullStartedAt``, else ``startedAt``, to ``stoppedAt``; the orchestrator keeps it in
  ``run=<id>/attempts/<n>.stopped.json``), the time of the attempt that is still running (the one writing
  MANIFEST.json / ERROR.json) is its own clock, up to the commit; each attempt is billed per second with a
  one-minute minimum;
- the task size (vCPU, memory, ephemeral storage; beyond the free 20 GiB only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

PRICES_PATH = Path(__file__).with_name("fargate_prices.json")
CAPACITY = "on-demand"  # the orchestrator's RunTask uses launchType FARGATE, never a Spot provider
ARCHITECTURES = {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "ARM64", "arm64": "ARM64"}


@lru_cache(maxsize=1)
def load_prices() -> dict[str, Any]:
    """The committed price table (``fargate_prices.json``)."""
    table: dict[str, Any] = json.loads(PRICES_PATH.read_text(encoding="utf-8"))
    return table


def stopped_key(run_id: str, attempt: int) -> str:
    """Where the orchestrator keeps what ECS said about a stopped attempt (its billed time and size)."""
    return f"run={run_id}/attempts/{attempt}.stopped.json"


def architecture_name(machine: str | None) -> str | None:
    """ECS's name (``X86_64``, ``ARM64``) of a machine or ``ecs.cpu-architecture`` value; None if unknown."""
    if not machine:
        return None
    return ARCHITECTURES.get(
        machine.lower(), machine.upper() if machine.upper() in ("X86_64", "ARM64") else None
    )


def region_of_arn(arn: str | None) -> str | None:
    parts = (arn or "").split(":")
    return parts[3] or None if len(parts) > 4 and parts[0] == "arn" else None


def prices_for(
    region: str | None,
    architecture: str | None,
    table: Mapping[str, Any] | None = None,
    price_region: str | None = None,
) -> dict[str, Any]:
    """The ``prices`` of a cost document: the rates used, where they come from, or nulls with a note.
    ``price_region`` (``Q4_PRICE_REGION``) prices the run as if it ran there (the local stack's region is a
    stand-in): ``region`` is then the priced one and ``run_region`` where the task ran."""
    table = load_prices() if table is None else table
    run_region, region = region, (price_region or region)
    row = (table.get("on_demand") or {}).get(region or "") or {}
    rates = row.get(architecture or "") or {}
    prices: dict[str, Any] = {
        "region": region,
        "architecture": architecture,
        "capacity": CAPACITY,
        "os": "Linux",
        "currency": table.get("currency", "USD"),
        "vcpu_hour": rates.get("vcpu_hour"),
        "gb_hour": rates.get("gb_hour"),
        "ephemeral_gb_hour": row.get("ephemeral_gb_hour"),
        "as_of": table.get("as_of"),
        "source": table.get("source"),
    }
    if region != run_region:
        prices["run_region"] = run_region
        prices["note"] = f"Priced as if run in {region} (Q4_PRICE_REGION); the task ran in {run_region}."
    if not rates:
        prices["note"] = (
            f"The price table ({table.get('as_of')}) has no on-demand price for "
            f"{region or 'an unknown region'} {architecture or 'an unknown architecture'}; add it from "
            f"{table.get('source')}."
        )
    return prices


def billed_seconds(seconds: float | None, table: Mapping[str, Any] | None = None) -> int | None:
    """Fargate's billed seconds for one task: whole seconds, rounded up, at least the minimum (60)."""
    if seconds is None:
        return None
    minimum = int(((load_prices() if table is None else table).get("billing") or {}).get("minimum_s", 60))
    return max(minimum, math.ceil(max(0.0, seconds)))


def parse_time(value: object) -> datetime | None:
    """An ECS timestamp (ISO 8601 text as in events, or a datetime from boto3), else None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def stopped_record(detail: Mapping[str, Any], run_id: str, attempt: int) -> dict[str, Any]:
    """What an ECS STOPPED event says about an attempt's billing: ``pullStartedAt`` (else ``startedAt``) to
    ``stoppedAt``, the task size (cpu units -> vCPU, memory MiB, ephemeral GiB) and its architecture."""
    start_field = "pullStartedAt" if parse_time(detail.get("pullStartedAt")) else "startedAt"
    start, stop = parse_time(detail.get(start_field)), parse_time(detail.get("stoppedAt"))
    cpu_units = _number(detail.get("cpu"))
    ephemeral = detail.get("ephemeralStorage")
    attributes = {
        str(a.get("name")): a.get("value") for a in detail.get("attributes") or [] if isinstance(a, Mapping)
    }
    return {
        "run_id": run_id,
        "attempt": attempt,
        "task_arn": detail.get("taskArn"),
        "started_at": start.isoformat() if start else None,
        "started_from": start_field if start else None,
        "stopped_at": stop.isoformat() if stop else None,
        "seconds": round((stop - start).total_seconds(), 3) if start and stop else None,
        "vcpu": cpu_units / 1024 if cpu_units is not None else None,
        "memory_mib": _number(detail.get("memory")),
        "ephemeral_gib": _number(ephemeral.get("sizeInGiB")) if isinstance(ephemeral, Mapping) else None,
        "architecture": architecture_name(str(attributes.get("ecs.cpu-architecture") or "")),
        "region": region_of_arn(str(detail.get("taskArn") or "")),
    }


def usage(
    attempt: int,
    *,
    seconds: float | None,
    source: str | None,
    vcpu: float | None,
    memory_mib: float | None,
    ephemeral_gib: float | None,
    task_arn: str | None = None,
) -> dict[str, Any]:
    """One attempt's usage entry: measured and billed seconds, where the time comes from (``ecs``: the
    STOPPED event; ``task_clock``: the task's own clock up to its commit; null: unknown), and its size."""
    return {
        "attempt": attempt,
        "task_arn": task_arn,
        "source": source if seconds is not None else None,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "billed_s": billed_seconds(seconds),
        "vcpu": vcpu,
        "memory_mib": memory_mib,
        "ephemeral_gib": ephemeral_gib,
    }


def usage_of_stopped(record: Mapping[str, Any] | None, attempt: int) -> dict[str, Any]:
    """The usage entry of an attempt from its ``attempts/<n>.stopped.json`` (None: nothing known)."""
    record = record or {}
    return usage(
        attempt,
        seconds=_number(record.get("seconds")),
        source="ecs",
        vcpu=_number(record.get("vcpu")),
        memory_mib=_number(record.get("memory_mib")),
        ephemeral_gib=_number(record.get("ephemeral_gib")),
        task_arn=record.get("task_arn"),
    )


def run_cost(attempts: Sequence[Mapping[str, Any]], prices: Mapping[str, Any]) -> dict[str, Any]:
    """The ``cost`` of a run: ``vcpu_seconds``, ``gb_seconds``, ``ephemeral_gb_seconds`` (beyond the free 20
    GiB) summed over the attempts' billed seconds, ``usd`` (null when a price or an attempt's time or size
    is unknown: ``complete`` false), the ``prices`` used and the ``attempts``."""
    free = float((load_prices().get("billing") or {}).get("free_ephemeral_gib", 20))
    vcpu_s = gb_s = eph_s = 0.0
    complete = True
    for entry in attempts:
        billed, vcpu, memory = entry.get("billed_s"), entry.get("vcpu"), entry.get("memory_mib")
        if billed is None or vcpu is None or memory is None:
            complete = False
            continue
        vcpu_s += billed * float(vcpu)
        gb_s += billed * float(memory) / 1024
        eph_s += billed * max(0.0, float(entry.get("ephemeral_gib") or free) - free)
    usd: float | None = None
    rates = (prices.get("vcpu_hour"), prices.get("gb_hour"))
    eph_rate = prices.get("ephemeral_gb_hour")
    if complete and None not in rates and (eph_s == 0 or eph_rate is not None):
        usd = (
            vcpu_s * float(rates[0] or 0) + gb_s * float(rates[1] or 0) + eph_s * float(eph_rate or 0)
        ) / 3600
    return {
        "vcpu_seconds": round(vcpu_s, 3),
        "gb_seconds": round(gb_s, 3),
        "ephemeral_gb_seconds": round(eph_s, 3),
        "usd": round(usd, 6) if usd is not None else None,
        "complete": complete,
        "billing": "per second, 1-minute minimum per attempt",
        "prices": dict(prices),
        "attempts": [dict(entry) for entry in attempts],
    }


def earlier_attempts(store: Any, run_id: str, attempts: range) -> list[dict[str, Any]]:
    """Usage entries of stopped attempts from their ``attempts/<n>.stopped.json`` in ``store`` (any
    :class:`~q4_contract.store.RunDocuments`); an unreadable or missing record is an unknown entry."""
    entries = []
    for attempt in attempts:
        try:
            record = store.read_json(stopped_key(run_id, attempt))
        except Exception:  # unreadable, denied, S3 trouble: this attempt's time is unknown (complete: false)
            record = None
        entries.append(usage_of_stopped(record, attempt))
    return entries


def cost_usd(doc: Mapping[str, Any]) -> float | None:
    """``cost.usd`` of a MANIFEST.json or ERROR.json (None when it has none)."""
    cost = doc.get("cost")
    value = cost.get("usd") if isinstance(cost, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
