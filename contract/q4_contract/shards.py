"""Sharded runs (docs/contract.md, "Sharded runs"): one run over many Fargate tasks.

A sharded run has three steps. ``pass1``: one task per shard reads its slice of the input and writes its
partial (row count, moments) once. ``pass2``: one task per shard merges every pass-1 partial in shard order,
fits the model (each task gets the same model: same partials, same order, same code), scores its slice and
writes its part of each row output and its pass-2 partial (energy, study tallies, plot sample) once.
``finish``: one task merges the pass-2 partials, assembles the row outputs at their usual keys, writes the
documents, MANIFEST.json last, and sends the done message. The orchestrator launches each step when the
step before it has every partial (it learns of it from the tasks' STOPPED events).

The plan (``run=<id>/plan.json``, written once by the orchestrator) cuts the input into slices by bytes:
the inputs' bytes, in key order, are split into ``shards`` equal ranges. A slice is a list of ranges
``{key, start, end}``. A row belongs to the range that holds its first byte (CSV: the first byte of its
line, the header excluded; Parquet: a row group belongs to the range that holds the first byte of its
first column chunk). A compressed CSV cannot be split: the whole object goes to the slice that holds its
first byte. So the slices partition the rows whatever their sizes, and a slice may hold no row at all.

This module is standard-library only: the orchestrator Lambda and the task share it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from q4_contract.errors import Rejection
from q4_contract.keys import MAX_CLIENT_TOKEN_LENGTH, run_prefix

PLAN_SCHEMA = "q4.plan/v1"
PARTIAL_SCHEMA = "q4.shard-partial/v1"
PASS1, PASS2, FINISH = "pass1", "pass2", "finish"
STEPS = (PASS1, PASS2, FINISH)

#: A work message's ``shards``: 1 to 1000.
SHARDS_RANGE = (1, 1000)
#: A plan never cuts slices smaller than this (a smaller input gets fewer shards than asked for).
MIN_SLICE_BYTES = 4096
#: Defaults of the Terraform variables ``shard_target_bytes`` and ``max_shards``.
DEFAULT_SHARD_TARGET_BYTES = 8 << 30
DEFAULT_MAX_SHARDS = 50

#: The task variables of a shard step (RunTask container overrides, beside the run's own).
ENV_SHARD_STEP = "Q4_SHARD_STEP"  # pass1 | pass2 | finish
ENV_SHARD = "Q4_SHARD"  # the shard's index, 0-based (finish: 0)

#: The suffixes of inputs that cannot be split by bytes (compressed CSV). The one list: the task's reader
#: (``q4.tables.CSV_CODECS``) derives its codecs from it.
UNSPLITTABLE_SUFFIXES = (".csv.gz", ".csv.bz2", ".csv.zst")

SIZED_BY_REQUEST = "requested"
SIZED_BY_INPUT = "input_bytes"


def check_shards(shards: int, run_id: str | None = None) -> int:
    """``shards`` of a work message: an integer from 1 to 1000, else ``invalid_shards``."""
    low, high = SHARDS_RANGE
    if not low <= shards <= high:
        raise Rejection(
            "invalid_shards",
            f"'shards' is {shards}; ask for {low} to {high} shards, or leave 'shards' out to let the "
            "orchestrator decide from the input's size.",
            run_id,
        )
    return shards


@dataclass(frozen=True)
class ShardLimits:
    """The deployment's sharding settings (Terraform ``shard_target_bytes``, ``max_shards``)."""

    target_bytes: int = DEFAULT_SHARD_TARGET_BYTES
    max_shards: int = DEFAULT_MAX_SHARDS

    def problem(self) -> str | None:
        if self.target_bytes < MIN_SLICE_BYTES:
            return f"shard_target_bytes is {self.target_bytes}, below {MIN_SLICE_BYTES}"
        if not SHARDS_RANGE[0] <= self.max_shards <= SHARDS_RANGE[1]:
            return f"max_shards is {self.max_shards}, outside {SHARDS_RANGE[0]}-{SHARDS_RANGE[1]}"
        return None

    def check_requested(self, shards: int, run_id: str | None = None) -> int:
        """A work message's ``shards`` within this deployment's maximum, else ``shards_not_allowed``."""
        if shards > self.max_shards:
            raise Rejection(
                "shards_not_allowed",
                f"'shards' is {shards}; this deployment runs at most {self.max_shards} shards per run; ask "
                "for fewer, or leave 'shards' out to let the orchestrator decide.",
                run_id,
            )
        return shards


@dataclass(frozen=True)
class InputObject:
    """One input object as listed: its key, size in bytes and (when known) ETag."""

    key: str
    size: int
    etag: str | None = None

    @property
    def splittable(self) -> bool:
        return not self.key.lower().endswith(UNSPLITTABLE_SUFFIXES)


def shard_count(
    objects: Sequence[InputObject], limits: ShardLimits, requested: int | None = None
) -> tuple[int, str]:
    """How many shards a run gets, and why (``requested`` or ``input_bytes``).

    A request is honoured exactly unless the input is too small for it: no slice is cut below
    :data:`MIN_SLICE_BYTES`, and unsplittable objects count as one slice each."""
    total = sum(o.size for o in objects)
    if requested is not None:
        wanted, sized_by = requested, SIZED_BY_REQUEST
    else:
        wanted = min(limits.max_shards, max(1, math.ceil(total / limits.target_bytes)))
        sized_by = SIZED_BY_INPUT
    splittable = sum(o.size for o in objects if o.splittable)
    most = max(1, splittable // MIN_SLICE_BYTES + sum(1 for o in objects if not o.splittable))
    return max(1, min(wanted, most)), sized_by


def plan_slices(objects: Sequence[InputObject], shards: int) -> list[list[dict[str, Any]]]:
    """Cut the inputs (in the order given: key order) into ``shards`` slices of about equal bytes.

    Each slice is a list of ``{key, start, end}`` ranges (``end`` exclusive); an unsplittable object is one
    whole range in the slice where its first byte falls."""
    total = sum(o.size for o in objects)
    bounds = [total * i // shards for i in range(shards + 1)]
    slices: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    offset = 0
    for obj in objects:
        first, last = offset, offset + obj.size
        if not obj.splittable or obj.size == 0:
            slices[_slice_of(bounds, first)].append({"key": obj.key, "start": 0, "end": obj.size})
        else:
            for index in range(_slice_of(bounds, first), shards):
                lo, hi = max(first, bounds[index]), min(last, bounds[index + 1])
                if lo >= last:
                    break
                if hi > lo:
                    slices[index].append({"key": obj.key, "start": lo - first, "end": hi - first})
        offset = last
    return slices


def _slice_of(bounds: Sequence[int], byte: int) -> int:
    """The slice whose byte range holds ``byte`` (the last slice for the end of the input)."""
    for index in range(len(bounds) - 1):
        if bounds[index] <= byte < bounds[index + 1]:
            return index
    return len(bounds) - 2


def plan_document(
    run_id: str, objects: Sequence[InputObject], shards: int, sized_by: str, requested: int | None
) -> dict[str, Any]:
    """``plan.json``: the run's slices (docs/contract.md, "Sharded runs")."""
    slices = plan_slices(objects, shards)
    return {
        "schema": PLAN_SCHEMA,
        "run_id": run_id,
        "shards": shards,
        "requested": requested,
        "sized_by": sized_by,
        "inputs": [{"key": o.key, "size": o.size, **({"etag": o.etag} if o.etag else {})} for o in objects],
        "slices": [
            {"index": i, "bytes": sum(r["end"] - r["start"] for r in ranges), "ranges": ranges}
            for i, ranges in enumerate(slices)
        ],
    }


# ---------------------------------------------------------------- keys


def plan_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}plan.json"


def shards_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}shards/"


def step_prefix(run_id: str, step: str, shard: int) -> str:
    """Where one shard step keeps its launch records, stop records, partial and (pass 2) row parts."""
    return f"{shards_prefix(run_id)}{step}/{shard:05d}/"


def partial_key(run_id: str, step: str, shard: int) -> str:
    """The step's partial (pass1, pass2), written once by the task that completed it."""
    return f"{step_prefix(run_id, step, shard)}partial.json"


def part_key(run_id: str, shard: int, name: str) -> str:
    """Shard ``shard``'s part of the row output ``name`` (``output/Q_keep.csv`` …), written in pass 2."""
    return f"{step_prefix(run_id, PASS2, shard)}{name}"


def step_attempt_key(run_id: str, step: str, shard: int, attempt: int) -> str:
    """The launch record of one attempt of a shard step, written once after a successful RunTask."""
    return f"{step_prefix(run_id, step, shard)}attempts/{attempt}.json"


def step_stopped_key(run_id: str, step: str, shard: int, attempt: int) -> str:
    """What ECS's STOPPED event said of one attempt of a shard step (billed time, size), once."""
    return f"{step_prefix(run_id, step, shard)}attempts/{attempt}.stopped.json"


def step_client_token(run_id: str, step: str, shard: int, attempt: int) -> str:
    """ECS RunTask idempotency token for one attempt of a shard step (<= 64 ASCII characters)."""
    digest = hashlib.sha256(f"{run_id}\n{step}\n{shard}\n{attempt}".encode()).hexdigest()[:40]
    return f"q4-{_STEP_MARK[step]}{shard}-{attempt}-{digest}"[:MAX_CLIENT_TOKEN_LENGTH]


_STEP_MARK = {PASS1: "1", PASS2: "2", FINISH: "f"}


@dataclass(frozen=True)
class Step:
    """One step of a sharded run: ``step`` (pass1, pass2, finish) of shard ``shard``."""

    step: str
    shard: int

    def env(self) -> list[dict[str, str]]:
        return [{"name": ENV_SHARD_STEP, "value": self.step}, {"name": ENV_SHARD, "value": str(self.shard)}]


def step_from_env(env: Mapping[str, str]) -> Step | None:
    """The shard step a task's environment names; None for an unsharded run (or an unusable value)."""
    step = env.get(ENV_SHARD_STEP, "").strip()
    if step not in STEPS:
        return None
    text = env.get(ENV_SHARD, "").strip() or "0"
    if not (text.isascii() and text.isdigit()):  # int() would also take "٣" or "1_0"
        return None
    return Step(step, int(text))
