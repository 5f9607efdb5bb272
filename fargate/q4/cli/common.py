"""What the pipeline commands (``q4 submit``, ``status``, ``runs``, ``fetch``) share.

They talk to whatever ``AWS_ENDPOINT_URL`` points at (real AWS when unset) and find the pipeline
through ``Q4_ARCHIVE_BUCKET``, ``Q4_ARTIFACTS_BUCKET``, ``Q4_WORK_QUEUE_URL`` and
``Q4_DONE_QUEUE_URL`` (``eval "$(q4 local env)"``, or ``terraform output`` for AWS).
A run's state comes from the buckets alone: ``accepted`` (job.json), ``succeeded``
(MANIFEST.json), ``failed`` (ERROR.json); ``submitted`` means inputs are uploaded but no
job.json exists yet. Rejections exist only as done messages, which ``submit --wait`` reads
without consuming anyone's messages.
"""

from __future__ import annotations

from typing import Any

import q4_contract as contract

from q4 import aws
from q4.errors import InputError, RunStateError


class Pipeline:
    """The pipeline's buckets and queues, reached through boto3."""

    def __init__(self) -> None:
        self.config = aws.PipelineConfig.from_env()
        self.s3 = aws.client("s3")
        self.sqs = aws.client("sqs")
        self.store = contract.S3Store(self.s3, self.config.artifacts_bucket)

    def state(self, run_id: str) -> contract.RunState:
        with aws.aws_errors(f"read the state of run {run_id}"):
            try:
                state = self.store.state(run_id)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError: a corrupt document
                raise RunStateError(
                    "corrupt_run",
                    f"A state document of run {run_id} (job.json, MANIFEST.json or ERROR.json) in "
                    f"s3://{self.config.artifacts_bucket} is not valid JSON; report it to whoever runs the "
                    "pipeline.",
                ) from None
            if state.state == "unknown" and self.inputs(run_id):
                state.state = "submitted"
        return state

    def inputs(self, run_id: str) -> list[dict[str, Any]]:
        return aws.list_keys(self.s3, self.config.archive_bucket, contract.input_root(run_id))

    def results_url(self, run_id: str) -> str:
        return f"s3://{self.config.artifacts_bucket}/{contract.run_prefix(run_id)}"


#: ``repr(value)`` cut short, exactly as the contract's rejections echo values.
shown = contract.shown


def check_run_id(run_id: str) -> str:
    if not contract.is_valid_run_id(run_id):
        raise InputError(
            "invalid_run_id",
            f"The run id {shown(run_id)} is not valid; use 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, without '..'.",
        )
    return run_id


def unusable_in_a_key(name: str) -> bool:
    """Control characters, backslashes and what UTF-8 cannot encode (undecodable bytes of a Linux file
    name arrive as lone surrogates): the work-message validator refuses such keys."""
    return "\\" in name or contract.has_control(name)


def printable(text: object) -> str:
    """Text read from a bucket (run ids, messages) with control characters shown escaped: nothing a
    bucket holds can move the cursor or recolour the user's terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def out(text: str = "") -> None:
    print(text, flush=True)
