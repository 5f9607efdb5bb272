"""Hostile work messages: whatever arrives on the work queue, the validator answers with a Job or a
Rejection (a code and one bounded sentence) and never names a key outside ``run=<run_id>/``.

Everything goes through the real :func:`contract.parse_message_body` (the orchestrator's entry point)
and the real done-message builder; nothing is mocked.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest
import q4_contract as contract
from hypothesis import event, given, settings
from hypothesis import strategies as st
from q4_contract import Job, Rejection

HOSTILE = settings.get_profile("hostile")

#: Every rejection code the orchestrator may send for a message it cannot use (docs/decisions/runtime.md).
CODES = {
    "invalid_json", "invalid_message", "unknown_field", "missing_field", "invalid_type", "invalid_run_id",
    "invalid_input", "path_traversal", "invalid_key", "wrong_prefix", "unknown_mode",
    "unknown_output_format", "invalid_model_key", "invalid_svd_k", "invalid_features", "too_many_features",
    "job_too_large", "unsupported_input", "invalid_task_cpu", "invalid_shards",
}  # fmt: skip
#: An SQS message (the done message) may carry at most 256 KiB.
SQS_MAX_BYTES = 256 * 1024
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_outcome(outcome: Job | Rejection) -> None:
    """The properties every answer of the validator must have."""
    if isinstance(outcome, Rejection):
        assert outcome.code in CODES, outcome.code
        msg = outcome.message
        assert msg and msg.endswith(".") and "\n" not in msg and len(msg) <= 1000, msg
        done = contract.rejected_done(outcome, "artifacts")
        body = json.dumps(done, sort_keys=True)  # exactly how the orchestrator sends it
        assert len(body.encode("utf-8")) < SQS_MAX_BYTES
        prefix = done["artifacts_prefix"]
        if prefix is not None:  # a prefix is only ever named for a usable run id
            assert RUN_ID.fullmatch(done["run_id"]) and ".." not in done["run_id"]
            assert prefix == f"run={done['run_id']}/"
        return
    job = outcome
    assert RUN_ID.fullmatch(job.run_id) and ".." not in job.run_id
    root = f"run={job.run_id}/input/"
    given_key = job.input_key if job.input_key is not None else job.input_prefix
    assert (job.input_key is None) != (job.input_prefix is None)
    assert given_key is not None and given_key.startswith(root)
    for key in (given_key, job.model_key or "m"):
        parts = key.split("/")
        assert not key.startswith("/") and "\\" not in key
        assert all(p not in ("..", ".") for p in parts) and "//" not in key
        key.encode("utf-8")  # S3 keys are UTF-8
    for key in (
        contract.job_key(job.run_id),
        contract.manifest_key(job.run_id),
        contract.error_key(job.run_id),
        contract.attempt_key(job.run_id, 3),
    ):
        assert key.startswith(contract.run_prefix(job.run_id)) and "/../" not in key
    json.dumps(job.to_dict(), ensure_ascii=False).encode("utf-8")  # job.json and the ECS overrides
    assert Job.from_env(job.to_env(2)) == job


def answer(body: str | bytes) -> Job | Rejection:
    try:
        return contract.parse_message_body(body)
    except Rejection as rejection:
        return rejection


# ---------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
run_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda r: ".." not in r)
#: Path segments an attacker or a careless user might put in a key.
segments = st.from_regex(r"\A[A-Za-z0-9=_.-]{1,12}\Z") | st.sampled_from(
    ["", ".", "..", "...", "input", "run=other", "run=x", "a.csv", "b.parquet", "%2e%2e", "..\\..",
     "\x00", "\n", "\u202e", "\ud800", "\ufffe", "é", "😀", "~", "*", "?", " ", "C:", "input\t"]
) | st.text(max_size=8)  # fmt: skip


@st.composite
def hostile_keys(draw: st.DrawFn, run_id: str) -> str:
    parts = draw(st.lists(segments, max_size=6))
    head = draw(
        st.sampled_from(
            [f"run={run_id}/input/", f"run={run_id}/", f"/run={run_id}/input/", f"run={run_id}/input/../",
             "run=other/input/", "", "/", "s3://bucket/", f"run={run_id}/input//", f"run={run_id}\n/input/"]
        )
    )  # fmt: skip
    return head + "/".join(parts)


def rarely(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """``usual`` four times in five, ``odd`` otherwise (so some messages get far enough to be accepted)."""
    return draw(st.one_of(usual, usual, usual, usual, odd))


@st.composite
def hostile_messages(draw: st.DrawFn) -> dict[str, Any]:
    odd_ids = st.text(max_size=70) | st.sampled_from(["r\n", "..", "a..b", "0..", "-r", "r/x", "r" * 65])
    run_id = rarely(draw, run_ids, odd_ids)
    message: dict[str, Any] = {"run_id": rarely(draw, st.just(run_id), json_values)}
    which = rarely(draw, st.sampled_from(["input_key", "input_prefix"]), st.sampled_from(["both", "none"]))
    for field in ("input_key", "input_prefix"):
        if which in (field, "both"):
            message[field] = rarely(draw, hostile_keys(run_id), json_values)
    optional = {
        "mode": st.sampled_from([*contract.MODES, "FULL", "", "x" * 3000]),
        "model_key": hostile_keys(run_id),
        "features": st.lists(st.text(max_size=12), max_size=6),
        "svd_k": st.integers() | st.sampled_from([True, 1.0, "10", 10**300]),
        "output_format": st.sampled_from([*contract.OUTPUT_FORMATS, "xlsx"]),
        "shards": st.integers() | st.sampled_from([True, 1.0, "3", 10**300]),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            message[name] = rarely(draw, strategy, json_values)
    if not rarely(draw, st.just(True), st.booleans()):
        message[draw(st.sampled_from(["\u0000evil", "", "RUN_ID", "run_id "]))] = draw(json_values)
    return message


# ---------------------------------------------------------------- properties


@settings(HOSTILE, max_examples=300)
@given(body=st.text(max_size=200))
def test_any_text_gets_a_job_or_a_bounded_rejection(body: str) -> None:
    check_outcome(answer(body))


@settings(HOSTILE, max_examples=200)
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_job_or_a_bounded_rejection(body: bytes) -> None:
    check_outcome(answer(body))


@settings(HOSTILE, max_examples=300)
@given(value=json_values)
def test_any_json_value_gets_a_job_or_a_bounded_rejection(value: object) -> None:
    check_outcome(answer(json.dumps(value)))


@st.composite
def near_valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid run id and a key under its input root made of hostile segments; valid other fields."""
    run_id = draw(run_ids)
    tail = "/".join(draw(st.lists(segments, min_size=1, max_size=4)))
    field = draw(st.sampled_from(["input_key", "input_prefix"]))
    message: dict[str, Any] = {"run_id": run_id, field: f"run={run_id}/input/{tail}"}
    if draw(st.booleans()):
        message["model_key"] = "/".join(draw(st.lists(segments, min_size=1, max_size=3)))
    if draw(st.booleans()):
        message["features"] = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
    return message


@settings(HOSTILE, max_examples=300)
@given(message=near_valid_messages())
def test_keys_made_of_hostile_segments_stay_under_the_input_root(message: dict[str, Any]) -> None:
    outcome = answer(json.dumps(message))
    check_outcome(outcome)
    event("accepted" if isinstance(outcome, Job) else f"rejected: {outcome.code}")


@settings(HOSTILE, max_examples=300)
@given(message=hostile_messages())
def test_hostile_messages_never_yield_a_key_outside_the_run(message: dict[str, Any]) -> None:
    outcome = answer(json.dumps(message))
    check_outcome(outcome)
    event("accepted" if isinstance(outcome, Job) else f"rejected: {outcome.code}")
    if isinstance(outcome, Job):
        assert outcome.run_id == message["run_id"]


@settings(HOSTILE, max_examples=200)
@given(
    env=st.dictionaries(
        st.sampled_from(contract.PER_RUN_ENV),
        st.text(max_size=40) | st.sampled_from(["r", "run=r/input/a.csv"]),
    )
)
def test_any_task_environment_gets_a_job_or_a_rejection(env: dict[str, str]) -> None:
    """The task rebuilds its job from the environment with the same rules (Job.from_env)."""
    try:
        outcome: Job | Rejection = Job.from_env(env)
    except Rejection as rejection:
        outcome = rejection
    check_outcome(outcome)


# ---------------------------------------------------------------- fixed cases (each was a bug)

VALID = {"run_id": "r1", "input_key": "run=r1/input/data.csv"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param("[" * 100_000 + "]" * 100_000, "invalid_json", id="nested-100k-deep"),
        pytest.param('{"a":' * 50_000 + "1" + "}" * 50_000, "invalid_json", id="objects-50k-deep"),
        pytest.param("9" * 5000, "invalid_json", id="5000-digit-number"),
        pytest.param(
            json.dumps({**VALID, "svd_k": 1}).replace("1}", "9" * 5000 + "}"), "invalid_json", id="huge-svd_k"
        ),
        pytest.param(b"\xff\xfe{\x00", "invalid_json", id="bytes-not-utf"),
        pytest.param(b"\xc3\x28", "invalid_json", id="bytes-invalid-utf8"),
        pytest.param("", "invalid_json", id="empty"),
        pytest.param("NaN", "invalid_message", id="nan"),
        pytest.param(
            json.dumps({"run_id": "r\n", "input_key": "run=r\n/input/a.csv"}),
            "invalid_run_id",
            id="run-id-trailing-newline",
        ),
        pytest.param(
            json.dumps({"run_id": "r", "input_key": "run=r/input/\ud800.csv"}),
            "invalid_key",
            id="lone-surrogate-key",
        ),
        pytest.param(
            json.dumps({**VALID, "features": ["a", "\udfff"]}),
            "invalid_features",
            id="lone-surrogate-feature",
        ),
        pytest.param(json.dumps({**VALID, "model_key": "m\ufffe.json"}), "invalid_key", id="non-xml-char"),
        pytest.param(json.dumps({**VALID, "mode": "x" * 250_000}), "unknown_mode", id="huge-mode"),
        pytest.param(
            json.dumps({**VALID, "output_format": "\u00e9" * 250_000}),
            "unknown_output_format",
            id="huge-output-format",
        ),
        pytest.param(
            json.dumps({"run_id": "\ue000" * 60_000, "input_key": "x"}), "invalid_run_id", id="huge-run-id"
        ),
        pytest.param(
            json.dumps({**VALID, **{f"extra{i}": i for i in range(20_000)}}),
            "unknown_field",
            id="20k-unknown-fields",
        ),
        pytest.param(json.dumps({**VALID, "x" * 200_000: 1}), "unknown_field", id="huge-field-name"),
        pytest.param(
            json.dumps({"run_id": "r1", "input_key": "run=r1/input/" + "a/" * 600 + "x.csv"}),
            "invalid_key",
            id="key-over-1024",
        ),
        pytest.param(
            json.dumps({"run_id": "r1", "input_key": "run=r1/input/../../run=r2/input/x.csv"}),
            "path_traversal",
            id="dotdot-escape",
        ),
        pytest.param(
            json.dumps({"run_id": "r1", "input_key": "/etc/passwd"}), "path_traversal", id="absolute"
        ),
        pytest.param(
            json.dumps({"run_id": "r1", "input_key": "run=r2/input/x.csv"}), "wrong_prefix", id="other-run"
        ),
        pytest.param(
            json.dumps({"run_id": "r1", "input_prefix": "run=r1/inputx/"}),
            "wrong_prefix",
            id="sibling-prefix",
        ),
        pytest.param(json.dumps({"run_id": "r1", "input_prefix": "run=r1/"}), "wrong_prefix", id="run-root"),
    ],
)
def test_hostile_bodies_are_rejected_with_the_right_code(body: str | bytes, code: str) -> None:
    outcome = answer(body)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.code == code, outcome.message
    check_outcome(outcome)


def test_the_original_example_still_works() -> None:
    job = answer('{"input_key":"run=2025-08-25-001/input/mydata.csv","run_id":"2025-08-25-001"}')
    assert isinstance(job, Job) and job.input_key == "run=2025-08-25-001/input/mydata.csv"


def test_utf16_json_with_a_bom_is_decoded_like_utf8() -> None:
    """json.loads detects UTF-16/32 in bytes; the same job comes out."""
    assert answer(json.dumps(VALID).encode("utf-16")) == answer(json.dumps(VALID))


def test_unknown_field_names_are_echoed_but_bounded() -> None:
    outcome = answer(json.dumps({**VALID, **{f"x{i}": 1 for i in range(50)}}))
    assert isinstance(outcome, Rejection)
    assert "'x0'" in outcome.message and "and 45 more" in outcome.message


@pytest.mark.parametrize("printable", [string.ascii_letters, "-_.", "0123456789"])
def test_run_ids_made_of_allowed_characters_are_accepted(printable: str) -> None:
    run_id = ("a" + printable)[:64]
    if ".." in run_id:
        pytest.skip("'..' is refused")
    outcome = answer(json.dumps({"run_id": run_id, "input_key": f"run={run_id}/input/x.csv"}))
    assert isinstance(outcome, Job)
