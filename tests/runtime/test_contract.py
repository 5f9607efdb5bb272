"""The job contract: validation rules, task environment round trip, ECS limits, done messages."""

from __future__ import annotations

import dataclasses
import json

import pytest
import q4_contract as contract
from hypothesis import given
from hypothesis import strategies as st
from q4_contract import Job, Rejection

run_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda r: ".." not in r)
column = st.text(
    alphabet=st.characters(
        blacklist_characters=",", blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Co", "Cn")
    ),
    min_size=1,
    max_size=12,
)


@given(
    run_id=run_ids,
    name=st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\.(csv|parquet)\Z"),
    mode=st.sampled_from(contract.MODES),
    features=st.none() | st.lists(column, min_size=1, max_size=5, unique=True),
    svd_k=st.integers(1, 1000),
    output_format=st.sampled_from(contract.OUTPUT_FORMATS),
    attempt=st.integers(1, 99),
)
def test_task_environment_round_trips_and_fits_ecs_limits(
    run_id: str,
    name: str,
    mode: str,
    features: list[str] | None,
    svd_k: int,
    output_format: str,
    attempt: int,
) -> None:
    message = {
        "run_id": run_id,
        "input_key": f"run={run_id}/input/{name}",
        "mode": mode,
        "svd_k": svd_k,
        "output_format": output_format,
    }
    if features is not None:
        message["features"] = features
    job = contract.parse_job(message)
    assert Job.from_env(job.to_env(attempt)) == job
    assert contract.parse_job(json.loads(job.to_json())) == job
    assert contract.attempt_from_env(job.to_env(attempt)) == attempt
    token = contract.client_token(run_id, attempt)
    assert len(token) <= 64 and token.isascii()
    assert token != contract.client_token(run_id, attempt + 1)
    assert len(contract.started_by(run_id)) <= 36


def test_defaults_make_equal_jobs() -> None:
    short = contract.parse_message_body(
        '{"input_key":"run=2025-08-25-001/input/mydata.csv","run_id":"2025-08-25-001"}'
    )
    spelled = contract.parse_job(
        {
            "run_id": "2025-08-25-001",
            "input_key": "run=2025-08-25-001/input/mydata.csv",
            "mode": "standard",
            "svd_k": 10,
            "output_format": "csv",
        }
    )
    assert short == spelled
    assert short.to_dict() == {
        "run_id": "2025-08-25-001",
        "input_key": "run=2025-08-25-001/input/mydata.csv",
        "mode": "standard",
        "svd_k": 10,
        "output_format": "csv",
    }


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"run_id": "r", "input_key": "run=r/input/"}, "wrong_prefix"),
        ({"run_id": "r", "input_key": "run=r/input//x.csv"}, "path_traversal"),
        ({"run_id": "r", "input_key": "run=r/input/./x.csv"}, "path_traversal"),
        ({"run_id": "r", "input_key": "/run=r/input/x.csv"}, "path_traversal"),
        ({"run_id": "r", "input_key": "run=r/input/x\\y.csv"}, "invalid_key"),
        ({"run_id": "r", "input_key": "run=r/input/x\n.csv"}, "invalid_key"),
        ({"run_id": "r", "input_prefix": "run=r/inputs/"}, "wrong_prefix"),
        ({"run_id": "r", "input_key": 5}, "invalid_type"),
        ({"run_id": 7, "input_key": "run=7/input/x.csv"}, "invalid_type"),
        ({"input_key": "run=r/input/x.csv"}, "missing_field"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "svd_k": 0}, "invalid_svd_k"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "svd_k": 1001}, "invalid_svd_k"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "svd_k": 2.0}, "invalid_type"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "features": []}, "invalid_features"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "features": ["a,b"]}, "invalid_features"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "features": ["a", "a"]}, "invalid_features"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "features": ["a\x00"]}, "invalid_features"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "features": ["a", 1]}, "invalid_type"),
        (
            {"run_id": "r", "input_key": "run=r/input/x.csv", "features": [f"c{i:05d}" for i in range(1200)]},
            "too_many_features",
        ),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "output_format": "xlsx"}, "unknown_output_format"),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "model_key": "../m.json"}, "path_traversal"),
        (
            {"run_id": "r", "input_key": "run=r/input/x.csv", "model_key": "run=a/output/er.json"},
            "invalid_model_key",
        ),
        (
            {"run_id": "r", "input_key": "run=r/input/x.csv", "model_key": "models/q4_model.json"},
            "invalid_model_key",
        ),
        ({"run_id": "r", "input_key": "run=r/input/x.csv", "mode": None}, "invalid_type"),
        ({"run_id": "x" * 65, "input_key": "run=x/input/x.csv"}, "invalid_run_id"),
        ({"run_id": "-r", "input_key": "run=-r/input/x.csv"}, "invalid_run_id"),
    ],
)
def test_bad_jobs_are_rejected_with_a_code_and_a_sentence(message: dict[str, object], code: str) -> None:
    with pytest.raises(Rejection) as caught:
        contract.parse_job(message)
    assert caught.value.code == code
    assert caught.value.message.endswith(".") and "\n" not in caught.value.message


def test_long_keys_exceeding_the_overrides_limit_are_rejected() -> None:
    stem = "k" * 1000
    job = contract.parse_job(
        {
            "run_id": "r",
            "input_key": f"run=r/input/{stem}.csv",
            "model_key": f"run={'m' * 64}/model/q4_model.json",
            "features": [f"c{i:04d}" for i in range(1000)],
        }
    )
    # Valid messages stay under ECS's limit today; the guard protects against fields growing later.
    contract.check_overrides_size(job, "q4")
    job = dataclasses.replace(job, model_key="m" * 1000)
    with pytest.raises(Rejection) as caught:
        contract.check_overrides_size(job, "q4")
    assert caught.value.code == "job_too_large"
    contract.check_overrides_size(contract.parse_job({"run_id": "r", "input_key": "run=r/input/x.csv"}), "q4")


def test_input_prefix_gets_a_trailing_slash() -> None:
    job = contract.parse_job({"run_id": "r", "input_prefix": "run=r/input/parts"})
    assert job.input_prefix == "run=r/input/parts/"
    assert contract.parse_job({"run_id": "r", "input_prefix": "run=r/input/"}).input_prefix == "run=r/input/"


def test_done_messages_follow_the_schema() -> None:
    manifest = {
        "run_id": "r",
        "mode": "full",
        "rows": {"keep": 2},
        "timings": {"read": 1.0, "total": 2.5},
        "compute": {"attempt": 2},
        "cost": {"usd": 0.00125, "vcpu_seconds": 60.0},
    }
    done = contract.succeeded_done(manifest, "bucket")
    assert done == {
        "schema": "q4.done/v1",
        "run_id": "r",
        "status": "succeeded",
        "mode": "full",
        "artifacts_bucket": "bucket",
        "artifacts_prefix": "run=r/",
        "manifest_key": "run=r/MANIFEST.json",
        "rows": {"keep": 2},
        "attempt": 2,
        "duration_s": 2.5,
        "duplicate": False,
        "cost_usd": 0.00125,
    }
    error = {
        "run_id": "r",
        "code": "too_few_rows",
        "message": "Too few rows.",
        "attempts": 1,
        "job": {"mode": "enhanced"},
        "details": {"n": 1},
    }
    failed = contract.failed_done(error, "bucket", duplicate=True)
    assert failed["error"] == {"code": "too_few_rows", "message": "Too few rows."}
    assert (failed["status"], failed["mode"], failed["attempt"], failed["duplicate"]) == (
        "failed",
        "enhanced",
        1,
        True,
    )
    rejected = contract.rejected_done(Rejection("invalid_json", "Not JSON."), "bucket")
    assert (
        rejected["run_id"] is None
        and rejected["artifacts_prefix"] is None
        and rejected["status"] == "rejected"
    )


def test_input_suffixes_are_what_the_task_reads() -> None:
    # the Lambda package cannot import q4, so the two lists are kept equal by this test
    from q4 import tables

    assert set(contract.INPUT_SUFFIXES) == set(tables.CSV_SUFFIXES + tables.PARQUET_SUFFIXES)


@pytest.mark.parametrize("key", ["run=r/input/x.txt", "run=r/input/x.csv.xz", "run=r/input/x.tsv"])
def test_an_input_key_the_task_cannot_read_is_rejected_at_once(key: str) -> None:
    with pytest.raises(contract.Rejection) as excinfo:
        contract.parse_job({"run_id": "r", "input_key": key})
    assert excinfo.value.code == "unsupported_input"
    assert "neither a .csv nor a .parquet" in excinfo.value.message


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        ('{"run_id": "r", "input_key": "x", "mode": "full"}', "full"),
        ('{"run_id": "r", "input_key": "x"}', "standard"),
        ('{"run_id": "r", "mode": "turbo"}', None),
        ('{"run_id": "r", "mode": 3}', None),
        ("[1, 2]", None),
        ("not json", None),
    ],
)
def test_a_rejection_carries_the_mode_the_message_asked_for(body: str, mode: str | None) -> None:
    assert contract.mode_hint(body) == mode


def test_the_field_table_is_the_job() -> None:
    """One table: the work message's fields, Job's attributes and defaults, and the task variables agree."""
    attributes = dataclasses.fields(Job)
    assert [a.name for a in attributes] == list(contract.FIELDS)
    defaults = {a.name: a.default for a in attributes}
    for field in contract.JOB_FIELDS:
        assert defaults[field.name] == field.default, field.name
        assert field.env == f"Q4_{field.name.upper()}"
    assert (
        contract.ENV_RUN_ID,
        *(field.env for field in contract.JOB_FIELDS),
        contract.ENV_ATTEMPT,
    ) == contract.PER_RUN_ENV
    assert (
        contract.MODES[0],
        contract.OUTPUT_FORMATS[0],
    ) == (contract.DEFAULT_MODE, contract.DEFAULT_OUTPUT_FORMAT)
