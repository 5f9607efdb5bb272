"""The job: its fields as one declarative table, their rules, and the three forms a job travels in.

- the work message (JSON, :func:`parse_job`; docs/contract.md, "Work message"),
- the task environment (:meth:`Job.to_env` / :meth:`Job.from_env`; docs/contract.md, "Task environment"),
- ``job.json`` (:meth:`Job.to_dict`).

``q4 run`` and ``q4 submit`` check their flags with the same rules (:func:`check_run_id`, :func:`check_mode`,
:func:`check_output_format`, :func:`check_svd_k`, :func:`svd_k_from_text`, :func:`check_feature_names`,
:func:`validate_work_message`), so one mistake gets one error code everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from q4_contract.errors import Rejection
from q4_contract.keys import MODEL_KEY_SUFFIX, input_root, is_input_object
from q4_contract.shards import FINISH, SHARDS_RANGE, Step, check_shards
from q4_contract.sizing import (
    EPHEMERAL_RANGE_GIB,
    FARGATE_CPU_STEPS,
    FARGATE_MEMORY_MIB,
    TaskSize,
    check_task_cpu,
)

# \Z, not $: "$" also matches before a trailing newline, which would let "r\n" through.
RUN_ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
RUN_ID_MAX_LENGTH = 64
MODES = ("standard", "enhanced", "full")
OUTPUT_FORMATS = ("csv", "parquet")
DEFAULT_MODE = "standard"
DEFAULT_OUTPUT_FORMAT = "csv"
DEFAULT_SVD_K = 10
SVD_K_RANGE = (1, 1000)
MAX_KEY_LENGTH = 1024
#: Values echoed in a rejection are cut to this many characters (a done message must fit in SQS's 256 KiB).
MAX_ECHO = 80
#: At most this many unknown field names are named in an ``unknown_field`` rejection.
MAX_ECHO_FIELDS = 5
# ECS RunTask limits (containerOverrides JSON <= 8192 chars; we leave room for the static part).
MAX_FEATURES_ENV_LENGTH = 6000
MAX_OVERRIDES_LENGTH = 8192
#: The task definition's container name (the orchestrator's Q4_CONTAINER_NAME default).
DEFAULT_CONTAINER_NAME = "q4"

# Environment variable names of the task (docs/contract.md, "Task environment").
ENV_RUN_ID = "Q4_RUN_ID"
ENV_INPUT_KEY = "Q4_INPUT_KEY"
ENV_INPUT_PREFIX = "Q4_INPUT_PREFIX"
ENV_MODE = "Q4_MODE"
ENV_MODEL_KEY = "Q4_MODEL_KEY"
ENV_FEATURES = "Q4_FEATURES"
ENV_SVD_K = "Q4_SVD_K"
ENV_OUTPUT_FORMAT = "Q4_OUTPUT_FORMAT"
ENV_ATTEMPT = "Q4_ATTEMPT"
ENV_TASK_CPU = "Q4_TASK_CPU"
ENV_SHARDS = "Q4_SHARDS"
#: Set by the orchestrator, not a job field: the input bytes it sized the task from (docs/contract.md,
#: "Task size").
ENV_INPUT_BYTES = "Q4_INPUT_BYTES"


# ---------------------------------------------------------------- the rules of single values


def is_valid_run_id(run_id: str) -> bool:
    """The run-id rule: ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`` and no ``..``."""
    return bool(RUN_ID_PATTERN.match(run_id)) and ".." not in run_id


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_ECHO` characters: rejections echo values but stay small."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


def has_control(text: str) -> bool:
    """Control characters, and what UTF-8 / S3's XML listings cannot carry (lone surrogates, U+FFFE/F)."""
    return any(
        ord(ch) < 32 or 127 <= ord(ch) < 160 or 0xD800 <= ord(ch) < 0xE000 or ch in "\ufffe\uffff"
        for ch in text
    )


def default_run_id(file_name: str, now: datetime | None = None) -> str:
    """The run id ``q4 run``, ``q4 submit`` and scripts/submit_run.sh give a file when none is named:
    ``<UTC yyyymmdd-HHMMSS.mmm>-<file stem sanitized>``, at most 64 characters (docs/contract.md, "Run id").

    Milliseconds, so two runs started in the same second on files of the same name get two run ids; the id
    still reads as a time and sorts in start order.
    """
    now = now or datetime.now(UTC)
    stamp = f"{now:%Y%m%d-%H%M%S}.{now.microsecond // 1000:03d}"
    stem = file_name.split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "input"
    stem = stem.replace("..", ".")
    return f"{stamp}-{stem}"[:RUN_ID_MAX_LENGTH].rstrip("-.")


def check_run_id(run_id: str) -> str:
    """The run id, or ``invalid_run_id`` (an id of a sane length travels back in the rejection)."""
    if not is_valid_run_id(run_id):
        raise Rejection(
            "invalid_run_id",
            f"The run id {shown(run_id)} is not valid; use 1-64 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit, without '..'.",
            run_id if len(run_id) <= MAX_KEY_LENGTH else None,
        )
    return run_id


def check_mode(mode: str, run_id: str | None = None) -> str:
    if mode not in MODES:
        raise Rejection("unknown_mode", f"Unknown mode {shown(mode)}; use one of {', '.join(MODES)}.", run_id)
    return mode


def check_output_format(output_format: str, run_id: str | None = None) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise Rejection(
            "unknown_output_format",
            f"Unknown output_format {shown(output_format)}; use {' or '.join(OUTPUT_FORMATS)}.",
            run_id,
        )
    return output_format


def check_svd_k(svd_k: int, run_id: str | None = None) -> int:
    if not SVD_K_RANGE[0] <= svd_k <= SVD_K_RANGE[1]:
        raise Rejection("invalid_svd_k", f"'svd_k' is {svd_k}; use an integer from 1 to 1000.", run_id)
    return svd_k


def _svd_k_integer(text: str, label: str, run_id: str | None) -> int:
    return _integer(text, label, run_id, "invalid_svd_k", "an integer from 1 to 1000")


def _integer(text: str, label: str, run_id: str | None, code: str, hint: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Rejection(code, f"{label}{shown(text)} is not an integer; set it to {hint}.", run_id) from None


def svd_k_from_text(text: str, label: str = "svd_k ", run_id: str | None = None) -> int:
    """``svd_k`` given as text (a command-line flag): ``invalid_svd_k`` unless an integer in range.
    ``label`` names where it came from in the message (``"--svd-k "``; the environment: ``"Q4_SVD_K="``)."""
    return check_svd_k(_svd_k_integer(text, label, run_id), run_id)


def check_feature_names(names: Sequence[str], run_id: str | None = None) -> tuple[str, ...]:
    """Feature column names: a non-empty list of distinct names without commas or control characters
    (the task environment carries them as a comma list)."""
    if not names or any(name == "" or "," in name or has_control(name) for name in names):
        raise Rejection(
            "invalid_features",
            "'features' must be a non-empty list of column names without commas, control characters "
            "or characters UTF-8 cannot encode.",
            run_id,
        )
    if len(set(names)) != len(names):
        raise Rejection("invalid_features", "'features' lists a column more than once.", run_id)
    return tuple(names)


def _check_key(field: str, value: str, run_id: str) -> str:
    if not value or len(value) > MAX_KEY_LENGTH:
        raise Rejection(
            "invalid_key",
            f"'{field}' must be a non-empty S3 key of at most {MAX_KEY_LENGTH} characters.",
            run_id,
        )
    if has_control(value) or "\\" in value:
        raise Rejection(
            "invalid_key",
            f"'{field}' contains control characters, characters UTF-8 cannot encode or backslashes; "
            "use a plain S3 key.",
            run_id,
        )
    segments = value.split("/")
    if value.startswith("/") or any(seg in (".", "..") for seg in segments) or "//" in value:
        raise Rejection(
            "path_traversal",
            f"'{field}' {shown(value)} contains '.', '..' or empty path segments; "
            "give a plain key without them.",
            run_id,
        )
    return value


def _check_input(field: str, value: str, run_id: str) -> str:
    key = _check_key(field, value, run_id)
    root = input_root(run_id)
    if not key.startswith(root) or (key == root and field == "input_key"):
        raise Rejection(
            "wrong_prefix",
            f"'{field}' {shown(key)} must lie under {root!r} in the archive bucket; upload the input there.",
            run_id,
        )
    return key


def _input_key(value: str, run_id: str) -> str:
    key = _check_input("input_key", value, run_id)
    if not is_input_object(key):
        raise Rejection(
            "unsupported_input",
            f"'input_key' {shown(key)} is neither a .csv nor a .parquet file (nor a .csv.gz, .csv.bz2 or "
            ".csv.zst); convert the table to CSV or Parquet, upload it and send the message again.",
            run_id,
        )
    return key


def _input_prefix(value: str, run_id: str) -> str:
    prefix = _check_input("input_prefix", value, run_id)
    return prefix if prefix.endswith("/") else prefix + "/"


def _model_key(value: str, run_id: str) -> str:
    model_key = _check_key("model_key", value, run_id)
    model_run = model_key.removeprefix("run=").removesuffix(MODEL_KEY_SUFFIX)
    if (
        not model_key.startswith("run=")
        or not model_key.endswith(MODEL_KEY_SUFFIX)
        or not is_valid_run_id(model_run)
    ):
        raise Rejection(
            "invalid_model_key",
            f"'model_key' {shown(model_key)} is not a saved model; give the key of a model written by "
            f"an enhanced or full run: run=<run_id>{MODEL_KEY_SUFFIX}.",
            run_id,
        )
    return model_key


def _features(names: list[str], run_id: str) -> tuple[str, ...]:
    features = check_feature_names(names, run_id)
    if len(",".join(features)) > MAX_FEATURES_ENV_LENGTH:
        raise Rejection(
            "too_many_features",
            f"'features' is longer than {MAX_FEATURES_ENV_LENGTH} "
            "characters, more than an ECS task override can carry; name fewer columns or "
            "leave 'features' out to use every numeric column.",
            run_id,
        )
    return features


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Field:
    """One job field: its name in the work message and ``job.json``, its task environment variable, its
    JSON kind (``key``/``text``: a string, ``int``, ``names``: a list of strings), its default (None:
    optional), whether JSON ``null`` means "absent", and its rule (value of the right kind, run id)."""

    name: str
    env: str
    kind: str
    default: Any
    nullable: bool
    check: Callable[[Any, str], Any]


#: The job's fields after ``run_id``, in the order they are checked (docs/contract.md, "Work message").
JOB_FIELDS = (
    Field("input_key", ENV_INPUT_KEY, "key", None, True, _input_key),
    Field("input_prefix", ENV_INPUT_PREFIX, "key", None, True, _input_prefix),
    Field("mode", ENV_MODE, "text", DEFAULT_MODE, False, check_mode),
    Field("model_key", ENV_MODEL_KEY, "key", None, True, _model_key),
    Field("features", ENV_FEATURES, "names", None, True, _features),
    Field("svd_k", ENV_SVD_K, "int", DEFAULT_SVD_K, False, check_svd_k),
    Field("output_format", ENV_OUTPUT_FORMAT, "text", DEFAULT_OUTPUT_FORMAT, False, check_output_format),
    Field("task_cpu", ENV_TASK_CPU, "int", None, True, check_task_cpu),
    Field("shards", ENV_SHARDS, "int", None, True, check_shards),
)
FIELDS = ("run_id", *(field.name for field in JOB_FIELDS))
PER_RUN_ENV = (ENV_RUN_ID, *(field.env for field in JOB_FIELDS), ENV_ATTEMPT)


def _typed(field: Field, value: object, run_id: str) -> Any:
    """``value`` when it is of the field's JSON kind, else ``invalid_type``."""
    if field.kind == "names":
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise Rejection(
                "invalid_type", f"'{field.name}' must be a list of column names (strings).", run_id
            )
    elif field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Rejection(
                "invalid_type", f"'{field.name}' must be an integer, got {type(value).__name__}.", run_id
            )
    elif not isinstance(value, str):
        raise Rejection(
            "invalid_type", f"'{field.name}' must be a string, got {type(value).__name__}.", run_id
        )
    return value


# ---------------------------------------------------------------- the job


@dataclass(frozen=True)
class Job:
    """A validated work message with defaults filled in (so equal jobs compare equal)."""

    run_id: str
    input_key: str | None = None
    input_prefix: str | None = None
    mode: str = DEFAULT_MODE
    model_key: str | None = None
    features: tuple[str, ...] | None = None
    svd_k: int = DEFAULT_SVD_K
    output_format: str = DEFAULT_OUTPUT_FORMAT
    task_cpu: int | None = None
    shards: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (``job.json``): absent optional fields are left out."""
        doc: dict[str, Any] = {"run_id": self.run_id}
        for field in JOB_FIELDS:
            value = getattr(self, field.name)
            if value is not None:
                doc[field.name] = list(value) if field.kind == "names" else value
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_env(self, attempt: int = 1) -> dict[str, str]:
        """The per-run task environment (RunTask container overrides); empty values are left out."""
        env = {ENV_RUN_ID: self.run_id}
        for field in JOB_FIELDS:
            value = getattr(self, field.name)
            if value is not None:
                env[field.env] = ",".join(value) if field.kind == "names" else str(value)
        env[ENV_ATTEMPT] = str(attempt)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Job:
        """Rebuild the job from the task environment; raises :class:`Rejection` when it is not valid."""
        doc: dict[str, Any] = {}
        if environ.get(ENV_RUN_ID, "") != "":
            doc["run_id"] = environ[ENV_RUN_ID]
        for field in JOB_FIELDS:
            value = environ.get(field.env, "")
            if value == "":
                continue
            if field.kind == "names":
                doc[field.name] = value.split(",")
            elif field.kind == "int":
                code, hint = _INT_TEXT[field.name]
                doc[field.name] = _integer(value, f"{field.env}=", doc.get("run_id"), code, hint)
            else:
                doc[field.name] = value
        return parse_job(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Job:
        return parse_job(doc)


#: The error code and the hint of an integer field given as text that is not an integer.
_INT_TEXT = {
    "svd_k": ("invalid_svd_k", "an integer from 1 to 1000"),
    "task_cpu": ("invalid_task_cpu", "a Fargate CPU step such as 1024"),
    "shards": ("invalid_shards", "an integer from 1 to 1000"),
}


def attempt_from_env(environ: Mapping[str, str]) -> int:
    """``Q4_ATTEMPT`` as a positive int (1 when absent or unusable)."""
    try:
        return max(1, int(environ.get(ENV_ATTEMPT, "1")))
    except ValueError:
        return 1


# ---------------------------------------------------------------- the work message


def _message_run_id(message: Mapping[Any, Any]) -> str:
    """The work message's run id, after the fields are known to be the contract's."""
    raw = message.get("run_id")
    # an unusable run id travels back as the raw string only when it is of a sane length
    hint = raw if isinstance(raw, str) and len(raw) <= MAX_KEY_LENGTH else None
    unknown = sorted(str(name) for name in message if name not in FIELDS)
    if unknown:
        more = f" and {len(unknown) - MAX_ECHO_FIELDS} more" if len(unknown) > MAX_ECHO_FIELDS else ""
        raise Rejection(
            "unknown_field",
            f"Unknown field(s) {', '.join(shown(n) for n in unknown[:MAX_ECHO_FIELDS])}{more}; allowed "
            f"fields are {', '.join(FIELDS)}.",
            hint,
        )
    if "run_id" not in message:
        raise Rejection("missing_field", "'run_id' is required.")
    if not isinstance(raw, str):
        raise Rejection("invalid_type", f"'run_id' must be a string, got {type(raw).__name__}.")
    return check_run_id(raw)


def parse_job(message: object) -> Job:
    """Validate a work message (a decoded JSON value) into a :class:`Job`; raises :class:`Rejection`."""
    if not isinstance(message, Mapping):
        raise Rejection(
            "invalid_message",
            "The work message must be a JSON object with at least "
            "'run_id' and 'input_key' or 'input_prefix'.",
        )
    run_id = _message_run_id(message)
    if (message.get("input_key") is None) == (message.get("input_prefix") is None):
        raise Rejection("invalid_input", "Give exactly one of 'input_key' or 'input_prefix'.", run_id)
    values: dict[str, Any] = {"run_id": run_id}
    for field in JOB_FIELDS:
        raw = message.get(field.name)
        if raw is None and (field.nullable or field.name not in message):
            values[field.name] = field.default
        else:
            values[field.name] = field.check(_typed(field, raw, run_id), run_id)
    return Job(**values)


def decode_message_body(body: str | bytes) -> object:
    """The JSON value of an SQS message body; ``invalid_json`` when it cannot be decoded."""
    try:
        return json.loads(body)
    # ValueError: also bytes that are not UTF-8/16/32 and integers beyond Python's 4300-digit limit;
    # RecursionError: arrays/objects nested deeper than the interpreter's stack allows
    except (ValueError, TypeError, RecursionError):
        raise Rejection(
            "invalid_json",
            "The work message is not valid JSON; send a JSON object such as "
            '{"run_id": "...", "input_key": "run=<run_id>/input/<file>"}.',
        ) from None


def parse_message_body(body: str | bytes) -> Job:
    """Decode and validate an SQS message body; raises :class:`Rejection` (and nothing else)."""
    return parse_job(decode_message_body(body))


def validate_work_message(message: object, container_name: str = DEFAULT_CONTAINER_NAME) -> Job:
    """Everything the orchestrator checks of a work message before it looks at the buckets: the fields
    (:func:`parse_job`) and the size of the task overrides (``job_too_large``). ``q4 submit`` checks the
    message it is about to send with this, so it refuses what the orchestrator would reject."""
    job = parse_job(message)
    check_overrides_size(job, container_name)
    return job


# ---------------------------------------------------------------- ECS overrides


def container_overrides(job: Job, attempt: int, container_name: str) -> dict[str, Any]:
    """RunTask ``overrides`` carrying the per-run environment of one attempt."""
    environment = [{"name": name, "value": value} for name, value in sorted(job.to_env(attempt).items())]
    return {"containerOverrides": [{"name": container_name, "environment": environment}]}


def task_overrides(
    job: Job, attempt: int, container_name: str, size: TaskSize, step: Step | None = None
) -> dict[str, Any]:
    """RunTask ``overrides`` of one attempt: the per-run environment plus the input bytes the task was sized
    from, and the task's size (task-level ``cpu``, ``memory``, ``ephemeralStorage``; the container's memory
    limit follows the task's). A step of a sharded run adds its variables (``Q4_SHARD_STEP``, ``Q4_SHARD``;
    ``attempt`` is then the step's)."""
    overrides = container_overrides(job, attempt, container_name)
    (container,) = overrides["containerOverrides"]
    container["environment"].append({"name": ENV_INPUT_BYTES, "value": str(size.input_bytes)})
    if step is not None:
        container["environment"].extend(step.env())
    container["memory"] = size.memory
    overrides.update(
        cpu=str(size.cpu),
        memory=str(size.memory),
        ephemeralStorage={"sizeInGiB": size.ephemeral_storage_gib},
    )
    return overrides


#: The step whose variables are longest (a sharded run's finish; shard indexes stay below 1000).
_LONGEST_STEP = Step(FINISH, SHARDS_RANGE[1] - 1)
#: The largest size a task can have, for :func:`check_overrides_size`.
_LARGEST = TaskSize(
    cpu=FARGATE_CPU_STEPS[-1],
    memory=FARGATE_MEMORY_MIB[FARGATE_CPU_STEPS[-1]][-1],
    ephemeral_storage_gib=EPHEMERAL_RANGE_GIB[1],
    sized_by="input_bytes",
    input_bytes=10**15,
)


def check_overrides_size(job: Job, container_name: str) -> None:
    """Reject a job whose task overrides would exceed the ECS limit of 8192 characters."""
    # the largest a task's overrides get: any run may be sharded (by its input's size), so with a step's
    # variables
    overrides = task_overrides(job, 999, container_name, _LARGEST, _LONGEST_STEP)
    size = len(json.dumps(overrides, separators=(",", ":")))
    if size > MAX_OVERRIDES_LENGTH:
        raise Rejection(
            "job_too_large",
            f"The job's task overrides take {size} characters, more than ECS "
            f"allows ({MAX_OVERRIDES_LENGTH}); use shorter keys or fewer features.",
            job.run_id,
        )
