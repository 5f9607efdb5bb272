"""Error codes: the one table of every code the product raises, the work-message :class:`Rejection`, and
how AWS error codes are classified ("not found", "denied", "precondition failed").

docs/contract.md, "Error codes" describes the same table in words; tests/contract checks that both list
exactly the codes the code raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Where a code can arise (the "where" column of docs/contract.md, "Error codes").
MESSAGE = "work message"  # the orchestrator rejects it: a `rejected` done message
TASK = "task"  # ERROR.json + a `failed` done message (the local runtime's tasks alike)
RUN = "q4 run"  # printed `q4: error: ... [code]`, exit 2; ERROR.json when the job itself failed
SUBMIT = "q4 submit"
STATUS = "q4 status/runs/fetch/dlq"
CLI = "any q4 command"
LIBRARY = "library API"
CANCEL = "q4 cancel"


@dataclass(frozen=True)
class ErrorCode:
    code: str
    meaning: str
    where: tuple[str, ...]


def _codes(*entries: tuple[str, str, tuple[str, ...]]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(code, meaning, where) for code, meaning, where in entries}


#: Every error code, its meaning and where it can arise (docs/contract.md, "Error codes").
ERROR_CODES: Mapping[str, ErrorCode] = _codes(
    # the work message and the job parameters (one set of rules: q4_contract.job)
    ("invalid_json", "the work message is not JSON", (MESSAGE,)),
    ("invalid_message", "the work message is not a JSON object", (MESSAGE,)),
    ("unknown_field", "the work message has a field the contract does not define", (MESSAGE,)),
    ("missing_field", "run_id is missing", (MESSAGE,)),
    ("invalid_type", "a field has the wrong JSON type (a boolean is not an integer)", (MESSAGE,)),
    ("invalid_run_id", "the run id breaks the run-id rule", (MESSAGE, TASK, RUN, SUBMIT, STATUS, CANCEL)),
    ("invalid_input", "not exactly one of input_key and input_prefix", (MESSAGE, TASK)),
    ("invalid_key", "a key is empty, too long, or holds control characters or backslashes", (MESSAGE, TASK)),
    ("path_traversal", "a key has '.', '..' or empty segments or a leading '/'", (MESSAGE, TASK)),
    ("wrong_prefix", "an input key or prefix is not under run=<run_id>/input/", (MESSAGE, TASK)),
    (
        "unsupported_input",
        "an input is neither .csv (.csv.gz, .csv.bz2, .csv.zst) nor .parquet (.pq)",
        (MESSAGE, TASK, RUN, SUBMIT),
    ),
    ("invalid_model_key", "model_key is not run=<id>/model/q4_model.json", (MESSAGE, TASK)),
    ("unknown_mode", "the mode is not standard, enhanced or full", (MESSAGE, TASK, RUN, SUBMIT)),
    ("unknown_output_format", "the output format is not csv or parquet", (MESSAGE, TASK, RUN)),
    ("invalid_svd_k", "svd_k is not an integer from 1 to 1000", (MESSAGE, TASK, RUN)),
    (
        "invalid_features",
        "features is empty, repeats a name, or a name is empty or holds a comma or control characters",
        (MESSAGE, TASK, RUN),
    ),
    (
        "too_many_features",
        "more features than a task override can carry (work message), or more "
        "feature columns than the mode allows (the job)",
        (MESSAGE, TASK, RUN),
    ),
    ("job_too_large", "the job's ECS task overrides would exceed 8192 characters", (MESSAGE,)),
    ("invalid_task_cpu", "task_cpu is not a Fargate CPU step (256, 512, ... 16384)", (MESSAGE, TASK, SUBMIT)),
    ("task_cpu_not_allowed", "task_cpu lies outside the deployment's CPU limits", (MESSAGE,)),
    ("invalid_shards", "shards is not an integer from 1 to 1000", (MESSAGE, TASK, SUBMIT)),
    ("shards_not_allowed", "shards is above the deployment's max_shards", (MESSAGE,)),
    ("invalid_chunk_rows", "--chunk-rows is below 1", (RUN,)),
    ("invalid_cpus", "Q4_CPUS is set but is not a positive whole number", (TASK, RUN)),
    # the orchestrator, before launching
    (
        "input_not_found",
        "the input object, file or every table under the prefix is missing",
        (MESSAGE, TASK, RUN, SUBMIT),
    ),
    ("run_conflict", "the run id was already accepted with a different job", (MESSAGE,)),
    # the job (task and q4 run alike): the input table
    ("no_input", "no input file was given", (RUN, LIBRARY)),
    ("empty_input", "an input file is empty (a compressed one: once decompressed)", (TASK, RUN, SUBMIT)),
    ("mixed_input_formats", "CSV and Parquet inputs in one run", (TASK, RUN)),
    ("input_columns_differ", "the input files do not have the same columns", (TASK, RUN)),
    ("duplicate_columns", "two columns have the same name", (TASK, RUN)),
    ("reserved_column", "an input column is named like an output column (q4_*)", (TASK, RUN)),
    (
        "malformed_csv",
        "a CSV input cannot be read as a table, or a compressed one does not decompress",
        (TASK, RUN),
    ),
    ("malformed_parquet", "a Parquet input cannot be read as a table", (TASK, RUN)),
    (
        "unshardable_csv",
        "a sharded run's CSV has a quoted line break where a slice begins (run it with 1 shard)",
        (TASK, RUN),
    ),
    ("unsupported_column_type", "a column's type cannot be carried to the outputs", (TASK, RUN)),
    ("invalid_input_key", "a listed input key cannot be stored as a local file", (TASK,)),
    # the job: features, rows, the model
    ("unknown_features", "a named feature is not a column of the input", (TASK, RUN)),
    ("non_numeric_features", "a named feature is not numeric", (TASK, RUN)),
    ("too_few_features", "fewer than 2 non-constant features", (TASK, RUN, LIBRARY)),
    ("too_few_rows", "fewer than 2 valid rows", (TASK, RUN, LIBRARY)),
    ("values_too_large", "feature values so large that their squares overflow", (LIBRARY,)),
    ("not_numeric", "the library got data that is not numeric", (LIBRARY,)),
    ("not_2d", "the library got data that is not a 2-D array", (LIBRARY,)),
    ("features_with_model", "features named together with a model (the model fixes them)", (TASK, RUN)),
    ("model_not_found", "no model at model_key / --model", (TASK, RUN, SUBMIT)),
    ("invalid_model", "the model file is not a valid q4_model.json", (TASK, RUN, LIBRARY)),
    ("model_mismatch", "the input lacks a feature of the model", (TASK, RUN)),
    # the task and the orchestrator's crash recovery
    ("internal_error", "the task failed unexpectedly (a bug); not retried", (TASK,)),
    ("task_crashed", "the task crashed on every attempt (ERROR.json written by the orchestrator)", (TASK,)),
    ("cancelled", "the run was cancelled by q4 cancel (ERROR.json written by the orchestrator)", (TASK,)),
    ("input_changed", "a sharded run's inputs changed after it was planned", (TASK,)),
    ("shard_not_ready", "a shard step found no plan or partial it needs (a crash, retried)", (TASK,)),
    # a run that already exists or ended
    ("run_exists", "the run id is already used by another job or a record q4 cannot read", (RUN, SUBMIT)),
    ("run_failed", "the run already failed with this job; a failed run is final", (RUN,)),
    ("run_busy", "another q4 run is writing this run", (RUN,)),
    ("run_changed", "another writer changed the run directory before the commit", (RUN,)),
    ("output_not_writable", "the --out directory cannot be written", (RUN,)),
    ("output_not_lockable", "the --out directory's file system cannot lock files", (RUN,)),
    # the user commands against the pipeline
    ("invalid_file_name", "the file name cannot be an S3 key segment", (SUBMIT,)),
    ("input_unreadable", "the file cannot be read", (SUBMIT,)),
    ("input_exists", "a different object already has this input key", (SUBMIT,)),
    ("wait_timeout", "the run did not end within --timeout (it goes on)", (SUBMIT,)),
    ("run_not_found", "no such run in the buckets", (STATUS, CANCEL)),
    ("run_not_finished", "the run has not ended yet", (STATUS,)),
    ("corrupt_run", "a run's job.json, MANIFEST.json or ERROR.json is not valid JSON", (SUBMIT, STATUS)),
    ("corrupt_manifest", "MANIFEST.json does not describe its artifacts soundly", (STATUS,)),
    ("missing_artifact", "an artifact MANIFEST.json lists is missing", (STATUS,)),
    ("checksum_mismatch", "a fetched file's size or sha256 differs from MANIFEST.json", (STATUS,)),
    ("destination_exists", "the fetch destination exists (use --force)", (STATUS,)),
    ("destination_not_directory", "the fetch destination is not a directory", (STATUS,)),
    ("no_space", "not enough free space for the fetched run", (STATUS,)),
    ("fetch_write_failed", "the fetched files cannot be written", (STATUS,)),
    # configuration and AWS trouble (task: a crash, retried; commands: exit 2, or 1 when transient)
    ("missing_configuration", "a required Q4_* variable is not set", (TASK, CLI)),
    ("no_region", "no AWS region is set", (TASK, CLI)),
    ("no_credentials", "no AWS credentials were found", (TASK, CLI)),
    ("access_denied", "AWS denied an action", (TASK, CLI)),
    ("missing_resource", "a pipeline bucket or queue does not exist", (TASK, CLI)),
    ("endpoint_unreachable", "the AWS endpoint cannot be reached (transient)", (TASK, CLI)),
    ("aws_error", "another AWS failure (transient)", (TASK, CLI)),
    ("local_stack_missing", "'q4 local' / 'q4 demo' outside a clone of the repository", (CLI,)),
)


class Rejection(Exception):
    """A work message (or job parameter) that breaks the contract: never retried, never launched."""

    def __init__(self, code: str, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.run_id = run_id


# ---------------------------------------------------------------- AWS error codes

#: S3/SQS error codes (and HTTP statuses as botocore reports them) that mean "there is no such thing".
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})


def aws_error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``exc.response["Error"]["Code"]``), else ``""``.

    Reads the attribute only, so the contract needs no botocore import.
    """
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return ""
    error = response.get("Error")
    return str(error.get("Code", "")) if isinstance(error, Mapping) else ""


def is_not_found_code(code: str) -> bool:
    """Whether an AWS error code means "no such key or bucket" (``NoSuchKey``, ``NoSuchBucket``, ``404``)."""
    return code in NOT_FOUND_CODES


def is_denied_code(code: str) -> bool:
    return code in DENIED_CODES


def is_not_found(exc: BaseException) -> bool:
    return is_not_found_code(aws_error_code(exc))


def is_denied(exc: BaseException) -> bool:
    return is_denied_code(aws_error_code(exc))


def is_precondition_failed(exc: BaseException) -> bool:
    response: Any = getattr(exc, "response", None)
    status = (
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, Mapping) else None
    )
    return aws_error_code(exc) in PRECONDITION_CODES or status == 412


def is_client_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an AWS service error answer (it carries ``response["Error"]``)."""
    return aws_error_code(exc) != "" or isinstance(getattr(exc, "response", None), Mapping)
