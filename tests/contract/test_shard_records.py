"""The bucket's record of a sharded run's steps, read from key listings (q4_contract.shard_records), and the
work message's ``shards`` field (docs/contract.md, "Work message", "Sharded runs")."""

from __future__ import annotations

import dataclasses

import pytest
import q4_contract as contract
from q4_contract import shards
from q4_contract.shard_records import step_records_from_keys

RUN = "r1"


def test_step_records_read_launch_records_stop_records_and_partials() -> None:
    keys = [
        shards.step_attempt_key(RUN, "pass1", 0, 1),
        shards.step_stopped_key(RUN, "pass1", 0, 1),
        shards.step_attempt_key(RUN, "pass1", 0, 2),
        shards.partial_key(RUN, "pass1", 0),
        shards.step_attempt_key(RUN, "pass1", 2, 1),
        shards.partial_key(RUN, "pass1", 12),
        # not records of pass 1: another step, another run, a part, odd names
        shards.step_attempt_key(RUN, "pass2", 1, 1),
        shards.step_attempt_key("r10", "pass1", 1, 1),
        shards.part_key(RUN, 1, "output/Q_keep.csv"),
        f"run={RUN}/shards/pass1/00003/attempts/x.json",
        f"run={RUN}/shards/pass1/abc/partial.json",
        f"run={RUN}/shards/pass1/00004/nested/partial.json",
    ]
    records = step_records_from_keys(RUN, "pass1", keys)
    assert dict(records.attempts) == {0: (1, 2), 2: (1,)}
    assert dict(records.stopped) == {0: (1,)}
    assert records.partials == frozenset({0, 12})
    assert (records.latest(0), records.latest(1), records.latest(2)) == (2, 0, 1)
    assert records.unlaunched(3) == [1] and records.missing_partials(3) == [1, 2]
    finish = step_records_from_keys(RUN, "finish", [shards.step_attempt_key(RUN, "finish", 0, 1)])
    assert finish.unlaunched(7) == [] and finish.missing_partials(7) == [0]


def test_shard_and_attempt_numbers_are_ascii_digits_only() -> None:
    # "²".isdigit() is true and int("²") raises; int("٣") is 3: neither is a number the keys spell
    prefix = f"run={RUN}/shards/pass1/"
    keys = [
        f"{prefix}²/partial.json",
        f"{prefix}٣/partial.json",
        f"{prefix}00001/attempts/².json",
        f"{prefix}00001/attempts/٣.stopped.json",
        f"{prefix}00001/attempts/1.json",
        f"{prefix}00001/attempts/1.stopped.json",
        f"{prefix}00002/attempts/2.json",
    ]
    records = step_records_from_keys(RUN, "pass1", keys)
    assert dict(records.attempts) == {1: (1,), 2: (2,)}
    assert dict(records.stopped) == {1: (1,)} and records.partials == frozenset()


def test_unstopped_and_running_attempts() -> None:
    keys = [
        shards.step_attempt_key(RUN, "pass2", 0, 1),
        shards.step_stopped_key(RUN, "pass2", 0, 1),
        shards.step_attempt_key(RUN, "pass2", 0, 2),  # runs
        shards.step_attempt_key(RUN, "pass2", 1, 1),  # wrote its partial, not stopped yet
        shards.partial_key(RUN, "pass2", 1),
        shards.step_stopped_key(RUN, "pass2", 2, 1),  # a stop without a launch record
    ]
    records = step_records_from_keys(RUN, "pass2", keys)
    assert records.unstopped() == [(0, 2), (1, 1)]
    assert records.running() == [(0, 2)]


def test_shards_is_a_job_field_that_travels_in_every_form() -> None:
    job = contract.parse_job({"run_id": RUN, "input_key": f"run={RUN}/input/a.csv", "shards": 12})
    assert job.shards == 12 and job.to_dict()["shards"] == 12
    assert job.to_env()["Q4_SHARDS"] == "12" and contract.Job.from_env(job.to_env()) == job
    assert contract.parse_job({"run_id": RUN, "input_key": f"run={RUN}/input/a.csv"}).shards is None
    # another shard count is another job (the same run id is then run_conflict)
    assert contract.job_difference(job.to_dict(), dataclasses.replace(job, shards=3)) is not None
    with pytest.raises(contract.Rejection) as caught:
        contract.Job.from_env({**job.to_env(), "Q4_SHARDS": "many"})
    assert caught.value.code == "invalid_shards"
    for bad in (0, 1001, -1):
        with pytest.raises(contract.Rejection) as caught:
            contract.parse_job({"run_id": RUN, "input_key": f"run={RUN}/input/a.csv", "shards": bad})
        assert caught.value.code == "invalid_shards" and caught.value.message.endswith(".")
