"""What the artifacts bucket says about a sharded run's steps (docs/contract.md, "Sharded runs"): its plan,
and per step and shard the launch records, stop records and partials under ``run=<id>/shards/``.

One listing of ``run=<id>/shards/<step>/`` answers for every shard of a step, so the orchestrator (is every
partial there? which shards have no task yet? which attempt is the latest? which attempts may still run?),
``q4 status`` (partials done / total), ``q4 cancel`` (every task of the run) and the costs (every step's
launch and stop records) read the same thing. :func:`step_records_from_keys` is the pure part; the rest
lists and reads through an :class:`~q4_contract.store.S3Store`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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

    def unstopped(self) -> list[tuple[int, int]]:
        """``(shard, attempt)`` of every launched attempt without a stop record (its STOPPED event not
        handled yet: the task may still run), in shard and attempt order."""
        return [
            (shard, attempt)
            for shard, attempts in sorted(self.attempts.items())
            for attempt in attempts
            if attempt not in self.stopped.get(shard, ())
        ]

    def running(self) -> list[tuple[int, int]]:
        """``(shard, attempt)`` of the launched attempts that may still run: no stop record, and the shard's
        partial of this step not written (a step whose partial exists has done its work)."""
        return [(shard, attempt) for shard, attempt in self.unstopped() if shard not in self.partials]


def step_total(step: str, shards: int) -> int:
    """How many tasks a step has: one per shard, the finish one."""
    return 1 if step == FINISH else shards


def _number(text: str) -> int | None:
    """A shard or attempt number as the keys spell it: ASCII digits only (``"²".isdigit()`` is true and
    ``int("²")`` raises; ``int("٣")`` is 3), else None."""
    return int(text) if re.fullmatch(r"[0-9]+", text) else None


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
        shard = _number(parts[0])
        if shard is None:
            continue
        if parts[1:] == [PARTIAL_NAME]:
            partials.add(shard)
        elif len(parts) == 3 and parts[1] == "attempts":
            name = parts[2]
            if name.endswith(".stopped.json"):
                number = _number(name.removesuffix(".stopped.json"))
                if number is not None:
                    stopped.setdefault(shard, set()).add(number)
            elif name.endswith(".json"):
                number = _number(name.removesuffix(".json"))
                if number is not None:
                    attempts.setdefault(shard, set()).add(number)
    return StepRecords(
        step,
        {shard: tuple(sorted(numbers)) for shard, numbers in attempts.items()},
        {shard: tuple(sorted(numbers)) for shard, numbers in stopped.items()},
        frozenset(partials),
    )


def run_step_records(store: S3Store, run_id: str) -> dict[str, StepRecords]:
    """Every step's records (pass1, pass2, finish), from one listing of ``run=<id>/shards/``."""
    keys = list(listed_keys(store, shards_prefix(run_id)))
    return {step: step_records_from_keys(run_id, step, keys) for step in STEPS}


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
    """``{shards, steps: {pass1: {done, total, tasks}, pass2: …, finish: …}}``: per step the partials written
    (the finish step is done when the run committed, ``committed``: MANIFEST.json exists) and the tasks
    launched (relaunches included), from one listing."""
    shards = plan_shards(plan)
    steps: dict[str, dict[str, int]] = {}
    for step, records in run_step_records(store, run_id).items():
        tasks = sum(len(attempts) for attempts in records.attempts.values())
        if step == FINISH:
            steps[step] = {"done": 1 if committed else 0, "total": 1, "tasks": tasks}
        else:
            steps[step] = {
                "done": len(records.partials & set(range(shards))),
                "total": shards,
                "tasks": tasks,
            }
    return {"shards": shards, "steps": steps}


@dataclass(frozen=True)
class LaunchRecord:
    """One launch record of a shard step: where it is and the task it names."""

    step: str
    shard: int
    attempt: int
    task_arn: str | None


def launched(store: S3Store, run_id: str) -> list[tuple[str, int, int]]:
    """``(step, shard, attempt)`` of every launch record of a sharded run, step by step, from one listing."""
    return [
        (step, shard, attempt)
        for step, records in run_step_records(store, run_id).items()
        for shard, attempts in sorted(records.attempts.items())
        for attempt in attempts
    ]


def unstopped_launch_records(store: S3Store, run_id: str, workers: int = 1) -> list[LaunchRecord]:
    """The launch records of every step's attempts that have no stop record (:meth:`StepRecords.unstopped`:
    the tasks that may still run), from one listing; only those records are read
    (:func:`read_launch_records`)."""
    which = [
        (step, shard, attempt)
        for step, records in run_step_records(store, run_id).items()
        for shard, attempt in records.unstopped()
    ]
    return read_launch_records(store, run_id, which, workers)


def read_launch_records(
    store: S3Store, run_id: str, which: Iterable[tuple[str, int, int]], workers: int = 1
) -> list[LaunchRecord]:
    """The launch records of ``which`` (``(step, shard, attempt)``), in that order, ``workers`` at once."""
    which = list(which)
    if workers <= 1 or len(which) <= 1:
        return [launch_record(store, run_id, *w) for w in which]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="q4-records") as pool:
        return list(pool.map(lambda w: launch_record(store, run_id, *w), which))


def launch_record(store: S3Store, run_id: str, step: str, shard: int, attempt: int) -> LaunchRecord:
    """The launch record of one attempt of one shard's step (its task ARN None when unreadable)."""
    doc = store.read_json(step_attempt_key(run_id, step, shard, attempt)) or {}
    arn = doc.get("task_arn")
    return LaunchRecord(step, shard, attempt, arn if isinstance(arn, str) else None)


def stopped_step_usage(store: S3Store, run_id: str) -> list[dict[str, Any]]:
    """The cost usage entries (``q4_contract.cost``) of every attempt of every step of a sharded run, each
    with its ``step`` and ``shard``: one per launched attempt (launch record) or stopped one (stop record
    ``run=<id>/shards/<step>/<k>/attempts/<n>.stopped.json``), summed with
    :func:`q4_contract.cost.run_cost`. An attempt without a stop record (its task may still run, or its
    STOPPED event was not handled yet) or with an unreadable one is an unknown entry (``complete`` false):
    the cost never claims to be complete while a launched task's time is unknown."""
    entries = []
    for step, records in run_step_records(store, run_id).items():
        for shard in sorted(set(records.attempts) | set(records.stopped)):
            stopped = records.stopped.get(shard, ())
            for attempt in sorted(set(records.attempts.get(shard, ())) | set(stopped)):
                record = None
                if attempt in stopped:
                    try:
                        record = store.read_json(step_stopped_key(run_id, step, shard, attempt))
                    except Exception:  # unreadable, denied, S3 trouble: this attempt's time is unknown
                        record = None
                entries.append({**usage_of_stopped(record, attempt), "step": step, "shard": shard})
    return entries
