"""The contract's run stores behave alike in S3 (the moto server) and in a local directory, and
run_ended / ended_with answer "did this run already end, and with the same job?" from them
(docs/contract.md, "A run that already ended")."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import q4_contract as contract
from botocore.exceptions import ClientError, ParamValidationError
from q4_contract import DirectoryStore, Job, S3Store, UnreadableDocument

RUN_ID = "store-1"
JOB = Job(run_id=RUN_ID, input_key=f"run={RUN_ID}/input/t.csv")

#: (store, write raw bytes at a key)
StoreAndWriter = tuple[Any, Callable[[str, bytes], None]]


@pytest.fixture(params=["s3", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAndWriter:
    if request.param == "directory":

        def write_file(key: str, body: bytes) -> None:
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(body)

        return DirectoryStore(tmp_path), write_file
    request.getfixturevalue("aws_env")
    s3 = boto3.client("s3")
    bucket = f"q4s-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)

    def write_object(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    return S3Store(s3, bucket), write_object


def doc(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_absent_documents_read_as_none(store: StoreAndWriter) -> None:
    documents, _ = store
    assert documents.read_json(contract.manifest_key(RUN_ID)) is None
    assert not documents.exists(contract.manifest_key(RUN_ID))
    assert contract.run_ended(documents, RUN_ID, lambda status, document: None) is None


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b"null", b"[" * 100_000])
def test_a_document_that_is_not_a_json_object_is_unreadable_not_absent(
    store: StoreAndWriter, body: bytes
) -> None:
    documents, write = store
    write(contract.manifest_key(RUN_ID), body)
    with pytest.raises(UnreadableDocument) as unreadable:
        documents.read_json(contract.manifest_key(RUN_ID))
    assert unreadable.value.key == contract.manifest_key(RUN_ID)
    with pytest.raises(UnreadableDocument):
        contract.ended_with(documents, JOB)


def test_a_terminal_document_of_another_run_is_unreadable(store: StoreAndWriter) -> None:
    documents, write = store
    write(contract.error_key(RUN_ID), doc(run_id="someone-else", code="too_few_rows"))
    with pytest.raises(UnreadableDocument, match="does not name this run"):
        contract.ended_with(documents, JOB)


def test_a_committed_run_with_the_same_job_spelled_out(store: StoreAndWriter) -> None:
    documents, write = store
    spelled = {**JOB.to_dict(), "mode": "standard", "svd_k": 10, "output_format": "csv"}
    write(contract.manifest_key(RUN_ID), doc(run_id=RUN_ID, status="succeeded", job=spelled))
    ended = contract.ended_with(documents, JOB)
    assert ended is not None and ended.status == "succeeded" and ended.same_job


def test_job_json_decides_over_the_terminal_documents_job(store: StoreAndWriter) -> None:
    documents, write = store
    write(contract.manifest_key(RUN_ID), doc(run_id=RUN_ID, job=JOB.to_dict()))
    write(contract.job_key(RUN_ID), doc(**{**JOB.to_dict(), "mode": "full"}))
    ended = contract.ended_with(documents, JOB)
    assert ended is not None and not ended.same_job
    assert ended.difference == "mode 'full' there, 'standard' here"


def test_a_failed_run_without_a_recorded_job_counts_as_the_same_job(store: StoreAndWriter) -> None:
    documents, write = store
    write(contract.error_key(RUN_ID), doc(run_id=RUN_ID, code="task_crashed"))
    ended = contract.ended_with(documents, JOB)
    assert ended is not None and ended.status == "failed" and ended.same_job
    assert ended.document["code"] == "task_crashed"


def test_the_manifest_wins_over_an_error_document(store: StoreAndWriter) -> None:
    documents, write = store
    write(contract.error_key(RUN_ID), doc(run_id=RUN_ID, code="x"))
    write(contract.manifest_key(RUN_ID), doc(run_id=RUN_ID))
    seen: list[str] = []
    ended = contract.run_ended(documents, RUN_ID, lambda status, document: seen.append(status) or "other")
    assert ended is not None and ended.status == "succeeded" and seen == ["succeeded"]
    assert ended.difference == "other" and not ended.same_job


def test_an_invalid_recorded_job_is_a_different_job() -> None:
    assert contract.job_difference({"run_id": RUN_ID}, JOB) == "the recorded job is not valid (invalid_input)"
    assert contract.job_difference(JOB.to_dict(), JOB) is None


def test_put_json_once_writes_once(aws_env: dict[str, str]) -> None:
    s3 = boto3.client("s3")
    bucket = f"q4s-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    documents = S3Store(s3, bucket)
    assert documents.put_json_once(contract.job_key(RUN_ID), JOB.to_dict())
    assert not documents.put_json_once(contract.job_key(RUN_ID), {"run_id": "other"})
    assert documents.job(RUN_ID) == JOB.to_dict()
    assert documents.state(RUN_ID).state == "accepted"


def test_a_missing_bucket_is_not_found_and_other_errors_pass_through(aws_env: dict[str, str]) -> None:
    documents = S3Store(boto3.client("s3"), f"q4s-missing-{uuid.uuid4().hex[:8]}")
    assert documents.read_json(contract.job_key(RUN_ID)) is None  # NoSuchBucket: nothing there
    with pytest.raises(ParamValidationError) as failed:  # not an AWS answer: raised as it is
        S3Store(boto3.client("s3"), "Not A Bucket!").read_json(contract.job_key(RUN_ID))
    assert not contract.is_client_error(failed.value)


def test_aws_error_codes_are_classified_by_their_code_string() -> None:
    assert all(map(contract.is_not_found_code, ("NoSuchKey", "NoSuchBucket", "NotFound", "404")))
    assert not contract.is_not_found_code("AccessDenied") and contract.is_denied_code("AccessDenied")
    refused = ClientError(
        {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject"
    )
    assert contract.aws_error_code(refused) == "PreconditionFailed" and contract.is_client_error(refused)
    assert contract.is_precondition_failed(refused) and not contract.is_not_found(refused)
    assert contract.aws_error_code(ValueError("no response")) == ""
