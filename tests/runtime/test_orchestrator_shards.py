"""Sharded runs, the orchestrator's side (docs/contract.md, "Sharded runs"): the real Lambda handler against
the moto server plans a run (plan.json), launches one pass-1 task per shard, and on the tasks' STOPPED events
launches pass 2 and the finish task once every partial of a step is there, relaunches a crashed step, and
fails the run when a step crashed on every attempt. moto's RunTask records tasks and runs nothing, so the
tests write the partials the tasks would write, by hand: what is tested is the orchestrator."""

from __future__ import annotations

import itertools
import json
from typing import Any

import boto3
import pytest
import q4_contract as contract
from botocore.awsrequest import AWSResponse
from q4_contract import shards
from q4_orchestrator.handler import lambda_handler
from support.pipeline import (
    Pipeline,
    artifact_keys,
    deliver_batches,
    drain,
    put,
    put_input,
    read,
    send_work,
    stopped_event,
    task_env,
    tasks_of,
)

RUN_ID = "sharded-1"
PREFIX = f"run={RUN_ID}/input/parts/"


def csv_bytes(rows: int, seed: int = 0) -> bytes:
    lines = ["a,b,c"] + [f"{i},{(i * 7 + seed) % 13},{(i * 3 + seed) % 5}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def put_parts(pipeline: Pipeline, sizes_rows: tuple[int, ...] = (900, 1200, 700)) -> int:
    """CSV inputs under the run's prefix; their total bytes."""
    total = 0
    for index, rows in enumerate(sizes_rows):
        body = csv_bytes(rows, index)
        put_input(pipeline, f"{PREFIX}part-{index}.csv", body)
        total += len(body)
    return total


def message(**fields: Any) -> str:
    return json.dumps({"run_id": RUN_ID, "input_prefix": PREFIX, **fields})


def accept(pipeline: Pipeline, body: str) -> None:
    send_work(pipeline, body)
    delivery = deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert delivery.failed == 0


def plan_of(pipeline: Pipeline) -> dict[str, Any]:
    return dict(json.loads(read(pipeline.artifacts_bucket, shards.plan_key(RUN_ID))))


def step_tasks(pipeline: Pipeline, step: str) -> dict[tuple[int, int], dict[str, Any]]:
    """The recorded tasks of one step: ``(shard, attempt) -> task``."""
    found = {}
    for task in tasks_of(pipeline):
        env = task_env(task)
        if env.get("Q4_SHARD_STEP") == step:
            key = (int(env["Q4_SHARD"]), int(env["Q4_ATTEMPT"]))
            assert key not in found, f"two tasks for {step} {key}"
            found[key] = task
    return found


def put_partial(pipeline: Pipeline, step: str, shard: int) -> None:
    put(pipeline.artifacts_bucket, shards.partial_key(RUN_ID, step, shard), b'{"rows": 1}')


def stopped(pipeline: Pipeline, task: dict[str, Any], exit_code: int | None, **extra: Any) -> str:
    outcome: str = lambda_handler(stopped_event(pipeline, task, exit_code, **extra), None)["outcome"]
    return outcome


def stop_reasons(pipeline: Pipeline, *tasks: dict[str, Any]) -> list[str | None]:
    """What ECS says of each task: the reason it was stopped with (None: not asked to stop)."""
    described = boto3.client("ecs").describe_tasks(
        cluster=pipeline.cluster, tasks=[t["taskArn"] for t in tasks]
    )
    by_arn = {t["taskArn"]: t for t in described["tasks"]}
    return [
        by_arn[t["taskArn"]].get("stoppedReason")
        if by_arn[t["taskArn"]]["desiredStatus"] == "STOPPED"
        else None
        for t in tasks
    ]


def request_cancel(pipeline: Pipeline) -> None:
    """The cancel request `q4 cancel` writes (without stopping the tasks)."""
    request = contract.cancel_request(RUN_ID, requested_at="2026-01-01T00:00:00Z")
    put(pipeline.artifacts_bucket, contract.cancel_key(RUN_ID), json.dumps(request).encode())


def fail_run_task_for_shard(boto_hooks: Any, shard: str) -> None:
    """RunTask answers with a failures entry (no task) for every launch of that shard's steps."""

    def hook(**kwargs: Any) -> Any:
        request = json.loads(kwargs["params"]["body"])
        env = {e["name"]: e["value"] for e in request["overrides"]["containerOverrides"][0]["environment"]}
        if env.get("Q4_SHARD") != shard:
            return None
        return AWSResponse("https://ecs", 200, {}, None), {"tasks": [], "failures": [{"reason": "AGENT"}]}

    boto_hooks("before-call.ecs.RunTask", hook)


# ---------------------------------------------------------------- accept: the plan and pass 1


def test_shards_3_writes_the_plan_and_launches_one_pass1_task_per_slice(pipeline: Pipeline) -> None:
    # GIVEN three CSV inputs under a prefix and a work message asking for 3 shards
    total = put_parts(pipeline)
    accept(pipeline, message(shards=3))
    # THEN plan.json cuts the inputs' bytes, in key order, into 3 slices of about equal bytes
    plan = plan_of(pipeline)
    assert (plan["schema"], plan["shards"], plan["requested"], plan["sized_by"]) == (
        "q4.plan/v1",
        3,
        3,
        "requested",
    )
    assert [i["key"] for i in plan["inputs"]] == [f"{PREFIX}part-{i}.csv" for i in range(3)]
    # AND each input carries its ETag as S3 lists it, without the quotes
    s3 = boto3.client("s3")
    for item in plan["inputs"]:
        etag = s3.head_object(Bucket=pipeline.archive_bucket, Key=item["key"])["ETag"]
        assert item["etag"] == etag.strip('"') and item["size"] == len(
            read(pipeline.archive_bucket, item["key"])
        )
    assert sum(s["bytes"] for s in plan["slices"]) == total
    assert max(s["bytes"] for s in plan["slices"]) - min(s["bytes"] for s in plan["slices"]) <= 1
    ranges = [(r["key"], r["start"], r["end"]) for s in plan["slices"] for r in s["ranges"]]
    for key in {r[0] for r in ranges}:  # every object covered once, without gaps
        spans = sorted((start, end) for k, start, end in ranges if k == key)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert spans[-1][1] == next(i["size"] for i in plan["inputs"] if i["key"] == key)
    # AND one pass-1 task per shard, with the run's variables, its step and shard, sized from its slice
    launched = step_tasks(pipeline, "pass1")
    assert sorted(launched) == [(0, 1), (1, 1), (2, 1)] and len(tasks_of(pipeline)) == 3
    for (shard, _), task in launched.items():
        env = task_env(task)
        assert env["Q4_RUN_ID"] == RUN_ID and env["Q4_INPUT_PREFIX"] == PREFIX and env["Q4_SHARDS"] == "3"
        assert env["Q4_INPUT_BYTES"] == str(plan["slices"][shard]["bytes"])
        assert task["startedBy"] == f"q4:{RUN_ID}"
        assert task["overrides"]["ephemeralStorage"] == {"sizeInGiB": 21}
        assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("1024", "4096")
        record = json.loads(
            read(pipeline.artifacts_bucket, shards.step_attempt_key(RUN_ID, "pass1", shard, 1))
        )
        assert record["task_arn"] == task["taskArn"] and (record["step"], record["shard"]) == ("pass1", shard)
        assert record["client_token"] == shards.step_client_token(RUN_ID, "pass1", shard, 1)
    # AND no run-level launch record: the run is sharded
    assert not [k for k in artifact_keys(pipeline) if k.startswith(f"run={RUN_ID}/attempts/")]
    # WHEN the same message arrives again: nothing new is launched, no done message
    accept(pipeline, message(shards=3))
    assert len(tasks_of(pipeline)) == 3 and drain(pipeline.done_queue_url) == []


@pytest.mark.parametrize(
    ("shards_asked", "max_env", "code", "words"),
    [
        (2000, None, "invalid_shards", "1 to 1000"),
        (0, None, "invalid_shards", "1 to 1000"),
        (51, None, "shards_not_allowed", "at most 50 shards"),
        (5, "4", "shards_not_allowed", "at most 4 shards"),
    ],
)
def test_shards_out_of_range_or_above_the_deployments_maximum_are_rejected(
    pipeline: Pipeline,
    monkeypatch: pytest.MonkeyPatch,
    shards_asked: int,
    max_env: str | None,
    code: str,
    words: str,
) -> None:
    if max_env is not None:
        monkeypatch.setenv("Q4_MAX_SHARDS", max_env)
    put_parts(pipeline)
    accept(pipeline, message(shards=shards_asked))
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "rejected" and done["error"]["code"] == code
    assert words in done["error"]["message"] and done["error"]["message"].endswith(".")
    assert tasks_of(pipeline) == [] and artifact_keys(pipeline) == []


def test_shards_must_be_an_integer(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=True))
    accept(pipeline, message(shards="3"))
    assert [d["error"]["code"] for d in drain(pipeline.done_queue_url)] == ["invalid_type"] * 2


def test_a_tiny_input_gets_fewer_shards_than_asked(pipeline: Pipeline) -> None:
    # GIVEN one input of 10000 bytes (slices are never cut below 4096 bytes: at most 2)
    body = csv_bytes(2000)[:10000]
    put_input(pipeline, f"{PREFIX}only.csv", body)
    accept(pipeline, message(shards=7))
    plan = plan_of(pipeline)
    assert (plan["shards"], plan["requested"], plan["sized_by"]) == (2, 7, "requested")
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1), (1, 1)]


def test_one_shard_is_an_ordinary_run(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=1))
    (task,) = tasks_of(pipeline)
    env = task_env(task)
    assert "Q4_SHARD_STEP" not in env and env["Q4_SHARDS"] == "1" and env["Q4_ATTEMPT"] == "1"
    assert artifact_keys(pipeline) == [f"run={RUN_ID}/attempts/1.json", f"run={RUN_ID}/job.json"]


@pytest.mark.parametrize(("max_shards", "expected"), [("4", 3), ("2", 2)])
def test_without_shards_the_run_is_sharded_by_the_deployments_target_bytes(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, max_shards: str, expected: int
) -> None:
    # GIVEN a deployment that cuts a shard per 8 KiB (at most max_shards), and 16-24 KiB of input
    monkeypatch.setenv("Q4_SHARD_TARGET_BYTES", "8192")
    monkeypatch.setenv("Q4_MAX_SHARDS", max_shards)
    total = put_parts(pipeline)
    assert 2 * 8192 < total <= 3 * 8192
    accept(pipeline, message())
    plan = plan_of(pipeline)
    assert (plan["shards"], plan["requested"], plan["sized_by"]) == (expected, None, "input_bytes")
    assert len(step_tasks(pipeline, "pass1")) == expected
    # AND the job records no shards: the same message is the same job
    assert "shards" not in json.loads(read(pipeline.artifacts_bucket, contract.job_key(RUN_ID)))


def test_the_deployments_shard_settings_are_checked(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from q4_orchestrator.config import ConfigurationError, OrchestratorConfig

    for name, value in (("Q4_MAX_SHARDS", "0"), ("Q4_MAX_SHARDS", "x"), ("Q4_SHARD_TARGET_BYTES", "100")):
        with pytest.raises(ConfigurationError, match=name if value == "x" else "sharding settings"):
            OrchestratorConfig.from_env({**pipeline.lambda_env, name: value})
    config = OrchestratorConfig.from_env(
        {**pipeline.lambda_env, "Q4_MAX_SHARDS": "7", "Q4_SHARD_TARGET_BYTES": "65536"}
    )
    assert (config.shard_limits.max_shards, config.shard_limits.target_bytes) == (7, 65536)
    assert OrchestratorConfig.from_env(pipeline.lambda_env).shard_limits == shards.ShardLimits()


def test_a_run_task_failure_part_way_is_retried_and_launches_only_the_rest(
    pipeline: Pipeline, boto_hooks: Any
) -> None:
    # GIVEN RunTask failing once for shard 1 (a failures entry)
    failed: list[str] = []

    def hook(**kwargs: Any) -> Any:
        request = json.loads(kwargs["params"]["body"])
        env = {e["name"]: e["value"] for e in request["overrides"]["containerOverrides"][0]["environment"]}
        if env.get("Q4_SHARD") != "1" or failed:
            return None
        failed.append(env["Q4_SHARD"])
        return AWSResponse("https://ecs", 200, {}, None), {"tasks": [], "failures": [{"reason": "AGENT"}]}

    boto_hooks("before-call.ecs.RunTask", hook)
    put_parts(pipeline)
    send_work(pipeline, message(shards=3))
    # WHEN the message is delivered: a batch item failure after shard 0; the redelivery launches 1 and 2
    first = deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1)
    assert first.failed == 1 and failed == ["1"]
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1)]
    second = deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert second.deleted == 1
    # THEN one task per shard, never two
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1), (1, 1), (2, 1)]
    assert len(tasks_of(pipeline)) == 3


# ---------------------------------------------------------------- STOPPED events: the steps


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_steps_advance_only_when_every_partial_is_there_and_events_are_idempotent(
    pipeline: Pipeline, output_format: str
) -> None:
    total = put_parts(pipeline)
    accept(pipeline, message(shards=3, output_format=output_format))
    pass1 = step_tasks(pipeline, "pass1")
    # WHEN shard 0 completed pass 1 (its partial, its event exit 0) and the others have not yet
    put_partial(pipeline, "pass1", 0)
    assert stopped(pipeline, pass1[(0, 1)], 0) == "waiting"
    # and shard 2's partial is there, shard 1's not: still waiting
    put_partial(pipeline, "pass1", 2)
    assert stopped(pipeline, pass1[(2, 1)], 0) == "waiting"
    assert step_tasks(pipeline, "pass2") == {}
    # WHEN the last partial is written: shard 1's event launches every pass-2 task
    put_partial(pipeline, "pass1", 1)
    assert stopped(pipeline, pass1[(1, 1)], 0) == "advanced"
    pass2 = step_tasks(pipeline, "pass2")
    assert sorted(pass2) == [(0, 1), (1, 1), (2, 1)]
    plan = plan_of(pipeline)
    for (shard, _), task in pass2.items():
        assert task_env(task)["Q4_INPUT_BYTES"] == str(plan["slices"][shard]["bytes"])
    # AND duplicate and late events of pass 1 launch nothing twice
    for key in ((1, 1), (0, 1), (2, 1), (1, 1)):
        assert stopped(pipeline, pass1[key], 0) == "stale"
    assert len(tasks_of(pipeline)) == 6
    # WHEN pass 2 completes out of order: the finish task starts once, sized from the largest slice for CSV
    # outputs (assembled in S3) and from the whole input for Parquet outputs (rewritten through it)
    put_partial(pipeline, "pass2", 2)
    assert stopped(pipeline, pass2[(2, 1)], 0) == "waiting"
    put_partial(pipeline, "pass2", 0)
    put_partial(pipeline, "pass2", 1)
    assert stopped(pipeline, pass2[(0, 1)], 0) == "advanced"
    assert stopped(pipeline, pass2[(1, 1)], 0) == "stale"
    assert stopped(pipeline, pass2[(0, 1)], 0) == "stale"
    (finish,) = step_tasks(pipeline, "finish").values()
    largest = max(item["bytes"] for item in plan["slices"])
    assert largest < total
    sized_from = largest if output_format == "csv" else total
    assert task_env(finish)["Q4_SHARD"] == "0" and task_env(finish)["Q4_INPUT_BYTES"] == str(sized_from)
    assert len(tasks_of(pipeline)) == 7
    # WHEN the finish task exits 0 (it sent the done message): nothing more
    assert stopped(pipeline, finish, 0) == "reported"
    assert stopped(pipeline, finish, 0) == "reported"
    assert len(tasks_of(pipeline)) == 7 and drain(pipeline.done_queue_url) == []
    # AND every stop was recorded once per step attempt, for the run's cost
    for step, shard in [("pass1", 0), ("pass1", 1), ("pass1", 2), ("pass2", 0), ("finish", 0)]:
        record = json.loads(read(pipeline.artifacts_bucket, shards.step_stopped_key(RUN_ID, step, shard, 1)))
        assert (record["step"], record["shard"], record["attempt"]) == (step, shard, 1)


def test_a_crashed_step_is_relaunched_then_fails_the_run_once(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    # WHEN shard 1's pass-1 task is OOM-killed (the same event twice)
    event = stopped_event(pipeline, pass1[(1, 1)], 137, stoppedReason="OutOfMemoryError")
    assert lambda_handler(event, None) == {"outcome": "relaunched"}
    assert lambda_handler(event, None) == {"outcome": "stale"}
    # THEN attempt 2 of that step only, with the same job
    launched = step_tasks(pipeline, "pass1")
    assert sorted(launched) == [(0, 1), (1, 1), (1, 2), (2, 1)]
    env = task_env(launched[(1, 2)])
    assert (env["Q4_SHARD_STEP"], env["Q4_SHARD"], env["Q4_ATTEMPT"]) == ("pass1", "1", "2")
    assert contract.Job.from_env(env) == contract.parse_message_body(message(shards=3))
    # WHEN attempt 2 fails to start and attempt 3 crashes too
    assert stopped(pipeline, launched[(1, 2)], None, stopCode="TaskFailedToStart") == "relaunched"
    third = step_tasks(pipeline, "pass1")[(1, 3)]
    last = stopped_event(pipeline, third, 1)
    assert lambda_handler(last, None) == {"outcome": "failed"}
    assert lambda_handler(last, None) == {"outcome": "stale"}
    assert lambda_handler(event, None) == {"outcome": "stale"}
    # THEN the run failed task_crashed, once, naming the shard and the step
    assert len(tasks_of(pipeline)) == 5
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "task_crashed"
    assert "pass1 task of shard 1" in done["error"]["message"] and done["attempt"] == 3
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(RUN_ID)))
    assert (error["details"]["shard"], error["details"]["shard_step"]) == (1, "pass1")
    assert error["details"]["exit_code"] == 1
    # AND its cost counts every launched attempt of every step: the shard's stopped ones, and the other
    # shards' tasks, not stopped when the run failed, as unknown
    attempts = {(a["step"], a["shard"], a["attempt"]): a for a in error["cost"]["attempts"]}
    assert sorted(attempts) == [
        ("pass1", 0, 1),
        ("pass1", 1, 1),
        ("pass1", 1, 2),
        ("pass1", 1, 3),
        ("pass1", 2, 1),
    ]
    assert attempts[("pass1", 1, 3)]["task_arn"] == third["taskArn"]
    assert attempts[("pass1", 0, 1)]["task_arn"] is None and attempts[("pass1", 0, 1)]["billed_s"] is None
    assert error["cost"]["complete"] is False and error["cost"]["usd"] is None
    # AND the other shards' tasks were stopped, naming the run's failure
    assert stop_reasons(pipeline, pass1[(0, 1)], pass1[(2, 1)], third) == ["Run failed: task_crashed"] * 2 + [
        None
    ]
    # AND a later clean stop of another shard launches nothing; their stops (exit 143) neither
    put_partial(pipeline, "pass1", 0)
    assert stopped(pipeline, pass1[(0, 1)], 0) == "reported"
    assert stopped(pipeline, pass1[(2, 1)], 143, stopCode="UserInitiated") == "reported"
    assert len(tasks_of(pipeline)) == 5 and drain(pipeline.done_queue_url) == []


def test_exit_0_without_the_partial_is_a_crash_and_exit_2_is_reported(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    caplog.clear()
    assert stopped(pipeline, pass1[(0, 1)], 0) == "relaunched"
    assert ("ERROR", "Step exited 0 without its partial; treated as a crash.") in log_lines(caplog)
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1), (0, 2), (1, 1)]
    assert stopped(pipeline, pass1[(1, 1)], 2) == "reported"
    assert len(tasks_of(pipeline)) == 3


def log_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The orchestrator's log lines so far: (level, message)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "q4-orchestrator"]


def test_exit_0_without_the_partial_after_a_cancel_request_is_logged_as_a_stop_for_the_cancel(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a cancel request: a task that finds it exits without writing its partial
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    request_cancel(pipeline)
    caplog.clear()
    # WHEN shard 0's task exits 0 without its partial: the run ends cancelled, logged as a warning, no error
    assert stopped(pipeline, pass1[(0, 1)], 0) == "cancelled"
    lines = log_lines(caplog)
    assert ("WARNING", "Step exited 0 without its partial; it stopped for the run's cancel request.") in lines
    assert [line for line in lines if line[0] == "ERROR"] == []
    assert len(tasks_of(pipeline)) == 2
    (done,) = drain(pipeline.done_queue_url)
    assert done["error"]["code"] == "cancelled"


def shard_failed_the_run(pipeline: Pipeline, shard: int = 0, step: str = "pass1") -> None:
    """A shard's task found bad input: its ERROR.json (details name the shard and step)."""
    error = contract.error_document(
        run_id=RUN_ID,
        code="malformed_csv",
        mode="standard",
        attempts=1,
        message="Row 3 is not CSV.",
        details={"shard": shard, "shard_step": step},
        retryable=False,
    )
    put(pipeline.artifacts_bucket, contract.error_key(RUN_ID), json.dumps(error).encode())


def test_exit_2_of_the_step_that_failed_the_run_stops_the_other_tasks(pipeline: Pipeline) -> None:
    # GIVEN 3 shards in pass 1; shard 0 found bad input: its ERROR.json names it, it exits 2
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    shard_failed_the_run(pipeline)
    assert stopped(pipeline, pass1[(0, 1)], 2) == "reported"
    # THEN the other shards' tasks are stopped (not shard 0's: its stop is recorded), naming the failure
    assert stop_reasons(pipeline, pass1[(0, 1)], pass1[(1, 1)], pass1[(2, 1)]) == [
        None,
        "Run failed: malformed_csv",
        "Run failed: malformed_csv",
    ]
    # AND their stops (exit 143) and a shard that found ERROR.json itself (exit 2) send and launch nothing
    assert stopped(pipeline, pass1[(1, 1)], 143, stopCode="UserInitiated") == "reported"
    assert stopped(pipeline, pass1[(2, 1)], 2) == "reported"
    assert stopped(pipeline, pass1[(2, 1)], 143, stopCode="UserInitiated") == "reported"
    assert len(tasks_of(pipeline)) == 3 and drain(pipeline.done_queue_url) == []


def test_a_stop_task_that_fails_is_logged_and_the_others_are_still_stopped(
    pipeline: Pipeline, boto_hooks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    refused = pass1[(1, 1)]["taskArn"]

    def hook(**kwargs: Any) -> Any:
        if json.loads(kwargs["params"]["body"])["task"] != refused:
            return None
        error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
        return AWSResponse("https://ecs", 400, {}, None), error

    boto_hooks("before-call.ecs.StopTask", hook)
    # WHEN shard 0 crashes on every attempt while StopTask of shard 1's task is refused
    caplog.clear()
    for attempt in (1, 2, 3):
        task = step_tasks(pipeline, "pass1")[(0, attempt)]
        assert stopped(pipeline, task, 1) == ("failed" if attempt == 3 else "relaunched")
    # THEN the run failed all the same, shard 2's task was stopped and the refusal is a warning
    assert stop_reasons(pipeline, pass1[(1, 1)], pass1[(2, 1)]) == [None, "Run failed: task_crashed"]
    assert ("WARNING", "Could not stop a task of the failed run.") in log_lines(caplog)
    (done,) = drain(pipeline.done_queue_url)
    assert done["error"]["code"] == "task_crashed"


def test_exit_2_of_a_step_that_found_another_steps_error_stops_nothing(pipeline: Pipeline) -> None:
    # GIVEN shard 0's ERROR.json; shard 1 found it and exits 2 before shard 0's own event
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    shard_failed_the_run(pipeline)
    # THEN only the event of the step that failed the run stops the others (one round of StopTask)
    assert stopped(pipeline, pass1[(1, 1)], 2) == "reported"
    assert stop_reasons(pipeline, pass1[(0, 1)], pass1[(1, 1)], pass1[(2, 1)]) == [None, None, None]


def test_a_crash_of_a_step_whose_partial_exists_counts_as_done(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    # a stray key whose shard is not ASCII digits ("²".isdigit() is true) is not a record and breaks nothing
    put(pipeline.artifacts_bucket, f"run={RUN_ID}/shards/pass1/²/partial.json", b"{}")
    # WHEN shard 0 wrote its partial, then its task was killed while exiting: not relaunched, waiting
    put_partial(pipeline, "pass1", 0)
    assert stopped(pipeline, pass1[(0, 1)], 137, stoppedReason="OutOfMemoryError") == "waiting"
    # AND shard 1 the same: the step is complete, pass 2 is launched
    put_partial(pipeline, "pass1", 1)
    assert stopped(pipeline, pass1[(1, 1)], None, stopCode="SpotInterruption") == "advanced"
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1), (1, 1)]
    pass2 = step_tasks(pipeline, "pass2")
    assert sorted(pass2) == [(0, 1), (1, 1)]
    # WHEN the run ended (pass 2 shard 1 failed it), a crash after a partial advances nothing
    put_partial(pipeline, "pass2", 0)
    put_partial(pipeline, "pass2", 1)
    shard_failed_the_run(pipeline, 1, "pass2")
    assert stopped(pipeline, pass2[(0, 1)], 137) == "reported"
    assert step_tasks(pipeline, "finish") == {} and len(tasks_of(pipeline)) == 4
    assert drain(pipeline.done_queue_url) == []


def test_a_crash_after_another_step_failed_the_run_resends_only_that_steps_done_message(
    pipeline: Pipeline,
) -> None:
    # GIVEN shard 0's pass-1 task found bad input: it wrote ERROR.json (naming its shard and step)
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    shard_failed_the_run(pipeline)
    # WHEN shard 1 crashes: the run already failed by another step's hand; nothing sent, nothing launched
    assert stopped(pipeline, pass1[(1, 1)], 1) == "reported"
    assert drain(pipeline.done_queue_url) == []
    # WHEN shard 0 itself crashed after its ERROR.json (before its done message): that one is re-sent once
    assert stopped(pipeline, pass1[(0, 1)], 137) == "resent"
    assert stopped(pipeline, pass1[(0, 1)], 137) == "stale"
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "malformed_csv"
    assert len(tasks_of(pipeline)) == 2


def test_a_cancelled_sharded_run_ends_when_its_steps_stop(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    put(
        pipeline.artifacts_bucket,
        contract.cancel_key(RUN_ID),
        json.dumps(contract.cancel_request(RUN_ID, requested_at="2026-01-01T00:00:00Z")).encode(),
    )
    # WHEN one shard completed and the other finished too, after the request: pass 2 is not launched
    put_partial(pipeline, "pass1", 0)
    assert stopped(pipeline, pass1[(0, 1)], 0) == "waiting"
    put_partial(pipeline, "pass1", 1)
    assert stopped(pipeline, pass1[(1, 1)], 0) == "cancelled"
    assert stopped(pipeline, pass1[(1, 1)], 0) == "reported"
    assert step_tasks(pipeline, "pass2") == {}
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"


def test_a_stopped_shard_of_a_cancelled_run_ends_it(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    put(
        pipeline.artifacts_bucket,
        contract.cancel_key(RUN_ID),
        json.dumps(contract.cancel_request(RUN_ID, requested_at="2026-01-01T00:00:00Z")).encode(),
    )
    assert stopped(pipeline, pass1[(0, 1)], 143, stopCode="UserInitiated") == "cancelled"
    # the other shard's task, still running, is stopped by the orchestrator
    assert stop_reasons(pipeline, pass1[(0, 1)], pass1[(1, 1)]) == [None, "Run failed: cancelled"]
    assert stopped(pipeline, pass1[(1, 1)], 143, stopCode="UserInitiated") == "reported"
    assert stopped(pipeline, pass1[(0, 1)], 143, stopCode="UserInitiated") == "stale"
    assert len(tasks_of(pipeline)) == 2
    (done,) = drain(pipeline.done_queue_url)
    assert done["error"]["code"] == "cancelled"
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(RUN_ID)))
    assert (error["details"]["shard"], error["details"]["shard_step"]) == (0, "pass1")
    # AND the re-sent work message gets the duplicate done message, nothing launched
    accept(pipeline, message(shards=2))
    (duplicate,) = drain(pipeline.done_queue_url)
    assert duplicate["duplicate"] is True and len(tasks_of(pipeline)) == 2


def test_a_work_message_of_a_cancelled_planned_run_launches_nothing(
    pipeline: Pipeline, boto_hooks: Any
) -> None:
    # GIVEN a plan whose every RunTask failed, then a cancel request
    boto_hooks(
        "before-call.ecs.RunTask",
        lambda **kwargs: (AWSResponse("https://ecs", 200, {}, None), {"tasks": [], "failures": [{}]}),
    )
    put_parts(pipeline)
    send_work(pipeline, message(shards=2))
    assert deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1).failed == 1
    assert shards.plan_key(RUN_ID) in artifact_keys(pipeline)
    put(
        pipeline.artifacts_bucket,
        contract.cancel_key(RUN_ID),
        json.dumps(contract.cancel_request(RUN_ID, requested_at="2026-01-01T00:00:00Z")).encode(),
    )
    # WHEN the message comes again: the run ends cancelled, nothing launched
    assert deliver_batches(pipeline.work_queue_url, lambda_handler).deleted == 1
    (done,) = drain(pipeline.done_queue_url)
    assert done["error"]["code"] == "cancelled" and tasks_of(pipeline) == []


def test_a_cancel_after_a_partial_launch_ends_the_run_once_its_launched_shards_stopped(
    pipeline: Pipeline, boto_hooks: Any
) -> None:
    # GIVEN 3 shards whose pass-1 launch failed part way: shards 0 and 1 run, shard 2's RunTask keeps failing
    fail_run_task_for_shard(boto_hooks, "2")
    put_parts(pipeline)
    send_work(pipeline, message(shards=3))
    assert deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1).failed == 1
    pass1 = step_tasks(pipeline, "pass1")
    assert sorted(pass1) == [(0, 1), (1, 1)]
    # AND shard 0 completed before the cancel request: waiting for the shards that have no partial yet
    put_partial(pipeline, "pass1", 0)
    assert stopped(pipeline, pass1[(0, 1)], 0) == "waiting"
    request_cancel(pipeline)
    # WHEN the message comes again while shard 1 still runs: nothing launched, nothing sent yet
    assert deliver_batches(pipeline.work_queue_url, lambda_handler).deleted == 1
    assert len(tasks_of(pipeline)) == 2 and drain(pipeline.done_queue_url) == []
    # WHEN shard 1 completes too: nothing of the run runs and shard 2 will never start: cancelled, once
    put_partial(pipeline, "pass1", 1)
    assert stopped(pipeline, pass1[(1, 1)], 0) == "cancelled"
    assert stopped(pipeline, pass1[(1, 1)], 0) == "reported"
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(RUN_ID)))
    assert error["attempts"] == 1 and (error["details"]["shard"], error["details"]["shard_step"]) == (
        1,
        "pass1",
    )
    assert len(tasks_of(pipeline)) == 2 and step_tasks(pipeline, "pass2") == {}


def test_a_cancel_after_the_launched_shards_finished_ends_the_run_on_the_redelivery(
    pipeline: Pipeline, boto_hooks: Any
) -> None:
    # GIVEN pass 1 launched part way (shard 2's RunTask fails) and shards 0 and 1 finished before the request
    fail_run_task_for_shard(boto_hooks, "2")
    put_parts(pipeline)
    send_work(pipeline, message(shards=3))
    assert deliver_batches(pipeline.work_queue_url, lambda_handler, max_rounds=1).failed == 1
    pass1 = step_tasks(pipeline, "pass1")
    for shard in (0, 1):
        put_partial(pipeline, "pass1", shard)
        assert stopped(pipeline, pass1[(shard, 1)], 0) == "waiting"
    request_cancel(pipeline)
    # WHEN the message is delivered again: nothing of the run runs, so it ends cancelled (not in flight)
    assert deliver_batches(pipeline.work_queue_url, lambda_handler).deleted == 1
    (done,) = drain(pipeline.done_queue_url)
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(RUN_ID)))
    assert error["attempts"] == 1 and error["details"].get("shard") is None
    assert len(tasks_of(pipeline)) == 2
    # AND another copy of the message gets the duplicate done message
    accept(pipeline, message(shards=3))
    (duplicate,) = drain(pipeline.done_queue_url)
    assert duplicate["duplicate"] is True and duplicate["error"]["code"] == "cancelled"


def timed(seconds: int) -> dict[str, Any]:
    """What a STOPPED event says of a task's time and size (1 vCPU, 4 GiB, 21 GiB)."""
    return {
        "startedAt": "2026-01-01T00:00:00Z",
        "stoppedAt": f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z",
        "cpu": "1024",
        "memory": "4096",
        "ephemeralStorage": {"sizeInGiB": 21},
    }


@pytest.mark.parametrize("other_stopped", [False, True])
def test_task_crashed_cost_counts_every_launched_attempt(pipeline: Pipeline, other_stopped: bool) -> None:
    # GIVEN 2 shards; shard 0 completed pass 1 (its stop recorded) or still runs
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    if other_stopped:
        put_partial(pipeline, "pass1", 0)
        assert stopped(pipeline, pass1[(0, 1)], 0, **timed(90)) == "waiting"
    # WHEN shard 1 crashes on every attempt (each stop with its times)
    for attempt in (1, 2, 3):
        task = step_tasks(pipeline, "pass1")[(1, attempt)]
        assert stopped(pipeline, task, 1, **timed(120)) == ("failed" if attempt == 3 else "relaunched")
    # THEN ERROR.json's cost has an entry per launched attempt; it is complete only when every one stopped
    error = json.loads(read(pipeline.artifacts_bucket, contract.error_key(RUN_ID)))
    cost = error["cost"]
    entries = {(a["step"], a["shard"], a["attempt"]): a for a in cost["attempts"]}
    assert sorted(entries) == [("pass1", 0, 1), ("pass1", 1, 1), ("pass1", 1, 2), ("pass1", 1, 3)]
    assert [entries[("pass1", 1, n)]["billed_s"] for n in (1, 2, 3)] == [120, 120, 120]
    assert entries[("pass1", 0, 1)]["billed_s"] == (90 if other_stopped else None)
    assert cost["complete"] is other_stopped
    assert (cost["usd"] is not None) is other_stopped
    assert cost["vcpu_seconds"] == 360 + (90 if other_stopped else 0)


def test_a_redriven_stop_of_a_shard_step_is_checked_and_recovered(pipeline: Pipeline) -> None:
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    pass1 = step_tasks(pipeline, "pass1")
    event = stopped_event(pipeline, pass1[(1, 1)], 1)
    # WHEN the event comes back through the work queue while ECS still runs the task: nothing happens
    send_work(pipeline, json.dumps(event))
    assert deliver_batches(pipeline.work_queue_url, lambda_handler).deleted == 1
    assert len(tasks_of(pipeline)) == 2
    # WHEN ECS stopped it: the step is relaunched (attempt 2 of shard 1's pass 1)
    boto3.client("ecs").stop_task(cluster=pipeline.cluster, task=pass1[(1, 1)]["taskArn"], reason="x")
    send_work(pipeline, json.dumps(event))
    assert deliver_batches(pipeline.work_queue_url, lambda_handler).deleted == 1
    assert sorted(step_tasks(pipeline, "pass1")) == [(0, 1), (1, 1), (1, 2)]
    # AND an event naming a task that is not the step's launched one is ignored
    forged = stopped_event(pipeline, pass1[(0, 1)], 1)
    env = forged["detail"]["overrides"]["containerOverrides"][0]["environment"]
    for item in env:
        if item["name"] == "Q4_SHARD":
            item["value"] = "1"
    send_work(pipeline, json.dumps(forged))
    deliver_batches(pipeline.work_queue_url, lambda_handler)
    assert len(tasks_of(pipeline)) == 3


# ---------------------------------------------------------------- the user commands


@pytest.fixture
def user_env(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    for name, value in pipeline.user_env.items():
        monkeypatch.setenv(name, value)
    return pipeline


def q4_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    from q4.cli import main

    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_status_shows_each_steps_partials(user_env: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    from q4.cli import main

    pipeline = user_env
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    for shard in (0, 1, 2):
        put_partial(pipeline, "pass1", shard)
    assert stopped(pipeline, pass1[(2, 1)], 0) == "advanced"
    put_partial(pipeline, "pass2", 1)
    # THEN `q4 status` shows the shards and each step's partials done / total, in text and JSON
    doc = q4_json(capsys, "status", RUN_ID)
    assert doc["shards"] == {
        "shards": 3,
        "steps": {
            "pass1": {"done": 3, "total": 3, "tasks": 3},
            "pass2": {"done": 1, "total": 3, "tasks": 3},
            "finish": {"done": 0, "total": 1, "tasks": 0},
        },
    }
    assert doc["tasks"] == 6 and "attempts" not in doc  # the run's tasks are its steps' tasks
    assert (doc["phase"]["phase"], doc["phase"]["step"]) == ("running", "pass2")
    assert main(["status", RUN_ID]) == 0
    text = capsys.readouterr().out
    assert "shards:    3 (pass1 3/3, pass2 1/3, finish 0/1)" in text and "tasks:     6" in text
    assert "phase:     running" in text and "step pass2: 1 of 3 done" in text


@pytest.mark.parametrize("batch", [100, 2])  # ECS's limit; 2: three tasks take two DescribeTasks calls
def test_cancel_stops_every_task_of_a_sharded_run(
    user_env: Pipeline, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    from q4.cli import cancel

    monkeypatch.setattr(cancel, "DESCRIBE_BATCH", batch)
    pipeline = user_env
    put_parts(pipeline)
    accept(pipeline, message(shards=3))
    pass1 = step_tasks(pipeline, "pass1")
    # GIVEN shard 0's pass-1 task already stopped (ECS reports it STOPPED)
    ecs = boto3.client("ecs")
    ecs.stop_task(cluster=pipeline.cluster, task=pass1[(0, 1)]["taskArn"], reason="done")
    # WHEN the run is cancelled
    doc = q4_json(capsys, "cancel", RUN_ID)
    # THEN the other two tasks are stopped, named by their step and shard
    assert doc["cancelled"] is True
    assert sorted((t["shard_step"], t["shard"], t["attempt"]) for t in doc["stopped_tasks"]) == [
        ("pass1", 1, 1),
        ("pass1", 2, 1),
    ]
    described = ecs.describe_tasks(cluster=pipeline.cluster, tasks=[t["taskArn"] for t in pass1.values()])
    assert {t["desiredStatus"] for t in described["tasks"]} == {"STOPPED"}
    # AND the stopped tasks' events end the run cancelled, once
    assert stopped(pipeline, pass1[(1, 1)], 143, stopCode="UserInitiated") == "cancelled"
    assert stopped(pipeline, pass1[(2, 1)], 143, stopCode="UserInitiated") == "reported"
    (done,) = drain(pipeline.done_queue_url)
    assert done["error"]["code"] == "cancelled"


def test_cancel_of_a_sharded_run_whose_tasks_all_stopped_says_none_is_running(
    user_env: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = user_env
    put_parts(pipeline)
    accept(pipeline, message(shards=2))
    # GIVEN every launched task has a stop record (their STOPPED events were handled; nothing relaunched yet)
    for shard, attempt in step_tasks(pipeline, "pass1"):
        key = shards.step_stopped_key(RUN_ID, "pass1", shard, attempt)
        boto3.client("s3").put_object(Bucket=pipeline.artifacts_bucket, Key=key, Body=b"{}")
    # WHEN the run is cancelled, THEN nothing is stopped, and the note says no task of it is running
    doc = q4_json(capsys, "cancel", RUN_ID)
    assert doc["cancelled"] is True and doc["stopped_tasks"] == []
    assert doc["note"].startswith("No task of the run is running")


def test_submit_sends_shards(user_env: Pipeline, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from q4.cli import main

    pipeline = user_env
    data = tmp_path / "data.csv"
    data.write_bytes(csv_bytes(3000))
    for bad in ("many", "0", "1001"):
        assert main(["submit", str(data), "--run-id", "sub-shards", "--shards", bad]) == 2
        assert capsys.readouterr().err.strip().endswith("[invalid_shards]")
    assert tasks_of(pipeline) == [] and drain(pipeline.work_queue_url) == []
    assert main(["submit", str(data), "--run-id", "sub-shards", "--shards", "4"]) == 0
    (sent,) = drain(pipeline.work_queue_url)
    assert sent == {
        "run_id": "sub-shards",
        "input_key": "run=sub-shards/input/data.csv",
        "mode": "standard",
        "shards": 4,
    }
