"""The sharded run's plan rules (q4_contract.shards; docs/contract.md, "Sharded runs"): slices partition
the input's bytes, a compressed CSV is never cut, small inputs get fewer shards, identifiers fit ECS."""

from __future__ import annotations

import itertools
import random

import pytest
from q4_contract import Rejection
from q4_contract import shards as rules


def _objects(sizes: list[int], compressed: set[int] = frozenset()) -> list[rules.InputObject]:
    return [
        rules.InputObject(f"run=r/input/{i:03d}.{'csv.gz' if i in compressed else 'csv'}", size)
        for i, size in enumerate(sizes)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_slices_cover_every_byte_of_every_object_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 4096, rng.randrange(1, 10**7)]) for _ in range(rng.randrange(1, 6))]
    compressed = {i for i in range(len(sizes)) if rng.random() < 0.3}
    objects = _objects(sizes, compressed)
    shards = rng.randrange(1, 12)
    slices = rules.plan_slices(objects, shards)
    assert len(slices) == shards
    covered: dict[str, list[tuple[int, int]]] = {}
    for ranges in slices:
        for r in ranges:
            assert 0 <= r["start"] < r["end"] or r["start"] == r["end"] == 0
            covered.setdefault(r["key"], []).append((r["start"], r["end"]))
    for obj in objects:
        pieces = covered.get(obj.key, [])
        assert pieces and pieces[0][0] == 0 and pieces[-1][1] == obj.size, obj
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces)), obj  # contiguous, in order
        if not obj.splittable:
            assert pieces == [(0, obj.size)]
    keys = [r["key"] for ranges in slices for r in ranges]
    assert keys == sorted(keys)  # slices follow the inputs' key order


def test_slices_are_equal_in_bytes_across_files() -> None:
    slices = rules.plan_slices(_objects([1000, 3000]), 4)
    assert [sum(r["end"] - r["start"] for r in s) for s in slices] == [1000, 1000, 1000, 1000]
    assert slices[1] == [{"key": "run=r/input/001.csv", "start": 0, "end": 1000}]


def test_a_request_is_honoured_unless_the_input_is_too_small() -> None:
    limits = rules.ShardLimits(target_bytes=1 << 30, max_shards=50)
    assert rules.shard_count(_objects([10**6]), limits, 7) == (7, "requested")
    assert rules.shard_count(_objects([3 * rules.MIN_SLICE_BYTES]), limits, 7) == (3, "requested")
    assert rules.shard_count(_objects([10**6, 10**6], {0, 1}), limits, 7) == (2, "requested")
    assert rules.shard_count(_objects([100]), limits, 7) == (1, "requested")
    # without a request: one shard per target bytes, capped
    assert rules.shard_count(_objects([(1 << 30) * 3 + 1]), limits) == (4, "input_bytes")
    assert rules.shard_count(_objects([(1 << 30) * 300]), limits) == (50, "input_bytes")
    assert rules.shard_count(_objects([10]), limits) == (1, "input_bytes")


def test_requests_outside_the_limits_are_refused_with_a_sentence() -> None:
    with pytest.raises(Rejection) as caught:
        rules.check_shards(0, "r")
    assert caught.value.code == "invalid_shards" and "1 to 1000" in caught.value.message
    with pytest.raises(Rejection) as caught:
        rules.ShardLimits(max_shards=10).check_requested(11, "r")
    assert caught.value.code == "shards_not_allowed" and "at most 10" in caught.value.message
    assert rules.ShardLimits(max_shards=10).check_requested(10) == 10
    assert rules.ShardLimits(target_bytes=10).problem() and rules.ShardLimits(max_shards=0).problem()


def test_step_identifiers_fit_ecs_and_differ_per_step_shard_and_attempt() -> None:
    run_id = "x" * 128
    tokens = {
        rules.step_client_token(run_id, step, shard, attempt)
        for step in rules.STEPS
        for shard in (0, 1, 999)
        for attempt in (1, 2)
    }
    assert len(tokens) == 18 and all(len(t) <= 64 and t.isascii() for t in tokens)
    assert rules.partial_key("r", "pass1", 3) == "run=r/shards/pass1/00003/partial.json"
    assert rules.part_key("r", 3, "output/Q_keep.csv") == "run=r/shards/pass2/00003/output/Q_keep.csv"
    assert rules.step_attempt_key("r", "finish", 0, 2) == "run=r/shards/finish/00000/attempts/2.json"


def test_the_step_comes_back_from_the_environment() -> None:
    step = rules.Step("pass2", 4)
    env = {v["name"]: v["value"] for v in step.env()}
    assert rules.step_from_env(env) == step
    assert rules.step_from_env({}) is None
    assert rules.step_from_env({"Q4_SHARD_STEP": "pass3", "Q4_SHARD": "1"}) is None
    assert rules.step_from_env({"Q4_SHARD_STEP": "pass1", "Q4_SHARD": "-1"}) is None
    for odd in ("٣", "1_0", "+2", "2.0", "x"):  # what int() would take or turn into another shard
        assert rules.step_from_env({"Q4_SHARD_STEP": "pass1", "Q4_SHARD": odd}) is None, odd
    assert rules.step_from_env({"Q4_SHARD_STEP": "finish", "Q4_SHARD": " 0 "}) == rules.Step("finish", 0)
