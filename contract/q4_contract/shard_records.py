"""What the artifacts bucket says about a sharded run's steps (docs/contract.md, "Sharded runs"): its plan,
and per step and shard the launch records, stop records and partials under ``run=<id>/shards/``.

One listing of ``run=<id>/shards/<step>/`` answers for every shard of a step, so the orchestrator (is every
partial there? which shards have no task yet? which attempt is the latest?), ``q4 status`` (partials done /
total), ``q4 cancel`` (every task of the run) and the finish task's cost (every step's stop records) read
the same thing. :func:`step_records_from_keys` is the pure part; the rest lists and reads through an
:class:`~q4_contract.store.S3Store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from q4_contract.cost import usage_of_stopped
from q4_contract.shards import (
    FINISH,
    PASS1,
    PASS2,
    STEPS,
    plan_key,
    shards_prefix,
    step_attempt_key,
    step_stopped_key,
)
from q4_contract.store import S3Store

#: The step each step's partials let start: pass 1's all there -> pass 2; pass 2's -> finish.
NEXT_STEP = {PASS1: PASS2, PASS2: FINISH}
PARTIAL_NAME = "partial.json"


@dataclass(frozen=True)
class StepRecords:
    """One step's records: per shard, the attempts launched (ascending) and stopped, and the partials."""

    step: str
    attempts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    stopped: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    partials: frozenset[int] = frozenset()

    def latest(self, shard: int) -> int:
        """The shard's latest launched attempt of this step (0: none launched)."""
        return max(self.attempts.get(shard, ()), default=0)

    def missing_partials(self, shards: int) -> list[int]:
        return [shard for shard in range(step_total(self.step, shards)) if shard not in self.partials]

    def unlaunched(self, shards: int) -> list[int]:
        """The shards of this step (of a run of ``shards``) without any launch record."""
        return [shard for shard in range(step_total(self.step, shards)) if not self.attempts.get(shard)]


def step_total(step: str, shards: int) -> int:
    """How many tasks a step has: one per shard, the finish one."""
    return 1 if step == FINISH else shards


def step_records_from_keys(run_id: str, step: str, keys: Iterable[str]) -> StepRecords:
    """The :class:`StepRecords` of ``step`` from the keys listed under ``run=<id>/shards/<step>/`` (other keys
    are ignored: a part of a row output, anything unexpected)."""
    prefix = f"{shards_prefix(run_id)}{step}/"
    attempts: dict[int, set[int]] = {}
    stopped: dict[int, set[int]] = {}
    partials: set[int] = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        if not parts[0].isdigit():
            continue
        shard = int(parts[0])
        if parts[1:] == [PARTIAL_NAME]:
            partials.add(shard)
        elif len(parts) == 3 and parts[1] == "attempts":
            name = parts[2]
            if name.endswith(".stopped.json") and name.removesuffix(".stopped.json").isdigit():
                stopped.setdefault(shard, set()).add(int(name.removesuffix(".stopped.json")))
            elif name.endswith(".json") and name.removesuffix(".json").isdigit():
                attempts.setdefault(shard, set()).add(int(name.removesuffix(".json")))
    return StepRecords(
        step,
        {shard: tuple(sorted(numbers)) for shard, numbers in attempts.items()},
        {shard: tuple(sorted(numbers)) for shard, numbers in stopped.items()},
        frozenset(partials),
    )


def listed_keys(store: S3Store, prefix: str) -> Iterator[str]:
    """Every key under ``prefix`` in the store's bucket, in key order."""
    for page in store.s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield str(item["Key"])


def step_records(store: S3Store, run_id: str, step: str) -> StepRecords:
    """One step's records, from one listing of ``run=<id>/shards/<step>/``."""
    return step_records_from_keys(run_id, step, listed_keys(store, f"{shards_prefix(run_id)}{step}/"))


def read_plan(store: Any, run_id: str) -> dict[str, Any] | None:
    """The run's ``plan.json`` (None: not a sharded run, or not planned yet)."""
    plan: dict[str, Any] | None = store.read_json(plan_key(run_id))
    return plan


def plan_shards(plan: Mapping[str, Any]) -> int:
    """The number of shards a plan cut (at least 1)."""
    shards = plan.get("shards")
    return shards if isinstance(shards, int) and not isinstance(shards, bool) and shards >= 1 else 1


def progress(store: S3Store, run_id: str, plan: Mapping[str, Any], committed: bool) -> dict[str, Any]:
    """``{shards, steps: {pass1: {done, total}, pass2: …, finish: …}}``: partials written per step (the finish
    step is done when the run committed, ``committed``: MANIFEST.json exists)."""
    shards = plan_shards(plan)
    steps: dict[str, dict[str, int]] = {}
    for step in (PASS1, PASS2):
        records = step_records(store, run_id, step)
        steps[step] = {"done": len(records.partials & set(range(shards))), "total": shards}
    steps[FINISH] = {"done": 1 if committed else 0, "total": 1}
    return {"shards": shards, "steps": steps}


@dataclass(frozen=True)
class LaunchRecord:
    """One launch record of a shard step: where it is and the task it names."""

    step: str
    shard: int
    attempt: int
    task_arn: str | None


def launch_records(store: S3Store, run_id: str) -> list[LaunchRecord]:
    """Every launch record of every step of a sharded run (none for an unsharded run), step by step."""
    keys = list(listed_keys(store, shards_prefix(run_id)))
    found = []
    for step in STEPS:
        records = step_records_from_keys(run_id, step, keys)
        for shard, attempts in sorted(records.attempts.items()):
            for attempt in attempts:
                doc = store.read_json(step_attempt_key(run_id, step, shard, attempt)) or {}
                arn = doc.get("task_arn")
                found.append(LaunchRecord(step, shard, attempt, arn if isinstance(arn, str) else None))
    return found


def stopped_step_usage(store: S3Store, run_id: str) -> list[dict[str, Any]]:
    """The cost usage entries (``q4_contract.cost``) of every stopped attempt of every step of a sharded run,
    from its stop records ``run=<id>/shards/<step>/<k>/attempts/<n>.stopped.json``, each with its ``step``
    and ``shard``; the finish task adds its own running attempt (source ``task_clock``) and sums them with
    :func:`q4_contract.cost.run_cost`. An unreadable record is an unknown entry (``complete`` false)."""
    keys = list(listed_keys(store, shards_prefix(run_id)))
    entries = []
    for step in STEPS:
        records = step_records_from_keys(run_id, step, keys)
        for shard, attempts in sorted(records.stopped.items()):
            for attempt in attempts:
                try:
                    record = store.read_json(step_stopped_key(run_id, step, shard, attempt))
                except Exception:  # unreadable, denied, S3 trouble: this attempt's time is unknown
                    record = None
                entries.append({**usage_of_stopped(record, attempt), "step": step, "shard": shard})
    return entries
