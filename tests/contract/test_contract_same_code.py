"""One mistake, one code: the same bad value gets the same error code from ``q4 run``, from a work message
(the real orchestrator against the moto server: its rejected done message), from the task environment and
from ``q4 submit`` (docs/contract.md, "Command line")."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from q4.cli import main
from q4_contract import Job, Rejection
from q4_orchestrator.handler import lambda_handler
from support.pipeline import drain, sqs_event

RUN_ID = "same-code-1"
TABLE = "a,b,c\n1,2,3\n4,5,7\n2,9,1\n"


#: code -> (q4 run arguments, work message fields, q4 submit arguments or None). Each bad value is the
#: same in the three forms.
CASES: dict[str, tuple[list[str], dict[str, Any], list[str] | None]] = {
    "invalid_run_id": (
        ["--run-id", "a..b"],
        {"run_id": "a..b", "input_key": "run=a..b/input/t.csv"},
        ["--run-id", "a..b"],
    ),
    "unknown_mode": (["--mode", "turbo"], {"mode": "turbo"}, ["--mode", "turbo"]),
    "unknown_output_format": (["--output-format", "xml"], {"output_format": "xml"}, None),
    "invalid_svd_k": (["--svd-k", "0"], {"svd_k": 0}, None),
    "invalid_features": (["--features", "a,b,a"], {"features": ["a", "b", "a"]}, None),
    "unsupported_input": (["INPUT=t.txt"], {"input_key": f"run={RUN_ID}/input/t.txt"}, ["FILE=t.txt"]),
    # nothing at the path / key: the orchestrator lists the archive bucket before it accepts a job
    "input_not_found": (["MISSING"], {"input_key": f"run={RUN_ID}/input/absent.csv"}, ["MISSING"]),
}


def q4(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``q4 ARGS`` in-process: (exit code, stderr); argparse's own exits are caught too."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def shown_code(err: str) -> str | None:
    """The ``[code]`` at the end of ``q4: error: <sentence> [<code>]``."""
    lines = err.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("q4: error: ") or not lines[0].endswith("]"):
        return None
    return lines[0].rsplit(" [", 1)[-1].rstrip("]")


def run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]) -> str | None:
    name = next((a.removeprefix("INPUT=") for a in extra if a.startswith("INPUT=")), "t.csv")
    table = tmp_path / name
    if "MISSING" not in extra:
        table.write_text(TABLE)
    flags = [a for a in extra if not a.startswith("INPUT=") and a != "MISSING"]
    if "--run-id" not in flags:
        flags += ["--run-id", RUN_ID]
    code, err = q4(capsys, "run", str(table), "--out", str(tmp_path / "out"), *flags)
    assert code == 2, err
    run_dir = tmp_path / "out" / f"run={RUN_ID}"
    if run_dir.exists():  # a bad job parameter writes nothing; a bad input is the job's failure: ERROR.json
        assert not (run_dir / "MANIFEST.json").exists()
        assert json.loads((run_dir / "ERROR.json").read_text())["code"] == shown_code(err)
    return shown_code(err)


@pytest.fixture
def orchestrator_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What the orchestrator needs to reject a message: its configuration, the artifacts bucket and the done
    queue (a rejection launches nothing, so the cluster and network need not exist)."""
    name = f"q4c-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=f"{name}-archive")
    boto3.client("s3").create_bucket(Bucket=f"{name}-artifacts")
    sqs = boto3.client("sqs")
    env = {
        "Q4_ARCHIVE_BUCKET": f"{name}-archive",
        "Q4_ARTIFACTS_BUCKET": f"{name}-artifacts",
        "Q4_WORK_QUEUE_URL": sqs.create_queue(QueueName=f"{name}-work")["QueueUrl"],
        "Q4_DONE_QUEUE_URL": sqs.create_queue(QueueName=f"{name}-done")["QueueUrl"],
        "Q4_CLUSTER": f"{name}-cluster",
        "Q4_TASK_DEFINITION": f"{name}-task",
        "Q4_SUBNETS": "subnet-0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def message_code(env: dict[str, str], fields: dict[str, Any]) -> str:
    """Send a work message through the real orchestrator; the code of its rejected done message."""
    body = {"run_id": RUN_ID, "input_key": f"run={RUN_ID}/input/t.csv", **fields}
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=env["Q4_WORK_QUEUE_URL"], MessageBody=json.dumps(body))
    messages = sqs.receive_message(QueueUrl=env["Q4_WORK_QUEUE_URL"], AttributeNames=["All"])["Messages"]
    response = lambda_handler(sqs_event(env["Q4_WORK_QUEUE_URL"], messages), None)
    assert response == {"batchItemFailures": []}
    done = drain(env["Q4_DONE_QUEUE_URL"])
    assert [d["status"] for d in done] == ["rejected"], done
    assert boto3.client("s3").list_objects_v2(Bucket=env["Q4_ARTIFACTS_BUCKET"]).get("KeyCount") == 0
    return str(done[0]["error"]["code"])


@pytest.mark.parametrize("code", sorted(CASES))
def test_q4_run_and_a_work_message_give_the_same_code(
    code: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], orchestrator_env: dict[str, str]
) -> None:
    run_args, fields, _ = CASES[code]
    assert run_code(tmp_path, capsys, run_args) == code
    assert message_code(orchestrator_env, fields) == code
    message = {"run_id": RUN_ID, "input_key": f"run={RUN_ID}/input/t.csv", **fields}
    if code == "input_not_found":  # the orchestrator looks in the bucket; the message itself is sound
        assert contract.validate_work_message(message).input_key == fields["input_key"]
        return
    with pytest.raises(Rejection) as rejected:  # the check q4 submit applies to the message it sends
        contract.validate_work_message(message)
    assert rejected.value.code == code


def _submit_cases() -> list[Any]:
    cases = []
    for code, (_, _, submit_args) in sorted(CASES.items()):
        if submit_args is not None:
            cases.append(pytest.param(code, submit_args, id=code))
    return cases


@pytest.mark.parametrize(("code", "submit_args"), _submit_cases())
def test_q4_submit_gives_the_same_code_and_sends_nothing(
    code: str,
    submit_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    orchestrator_env: dict[str, str],
) -> None:
    name = next((a.removeprefix("FILE=") for a in submit_args if a.startswith("FILE=")), "t.csv")
    table = tmp_path / name
    if "MISSING" not in submit_args:
        table.write_text(TABLE)
    flags = [a for a in submit_args if not a.startswith("FILE=") and a != "MISSING"]
    exit_code, err = q4(capsys, "submit", str(table), *flags)
    assert exit_code == 2 and shown_code(err) == code, err
    assert (
        boto3.client("s3").list_objects_v2(Bucket=orchestrator_env["Q4_ARCHIVE_BUCKET"]).get("KeyCount") == 0
    )
    assert drain(orchestrator_env["Q4_WORK_QUEUE_URL"]) == []


@pytest.mark.parametrize(
    ("variable", "value", "code"),
    [
        (contract.ENV_SVD_K, "abc", "invalid_svd_k"),
        (contract.ENV_SVD_K, "0", "invalid_svd_k"),
        (contract.ENV_MODE, "turbo", "unknown_mode"),
        (contract.ENV_OUTPUT_FORMAT, "xml", "unknown_output_format"),
        (contract.ENV_FEATURES, "a,b,a", "invalid_features"),
        (contract.ENV_RUN_ID, "a..b", "invalid_run_id"),
    ],
)
def test_the_task_environment_gives_the_same_codes(
    variable: str, value: str, code: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {**Job(run_id=RUN_ID, input_key=f"run={RUN_ID}/input/t.csv").to_env(), variable: value}
    with pytest.raises(Rejection) as rejected:
        Job.from_env(environ)
    assert rejected.value.code == code
    if variable == contract.ENV_SVD_K:  # text, as a flag is: the same code from q4 run --svd-k
        assert run_code(tmp_path, capsys, ["--svd-k", value]) == code
