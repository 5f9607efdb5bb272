"""The job contract shared by the orchestrator, the Fargate task, ``q4 submit`` and the local runtime.

Standard library only: the orchestrator Lambda imports it without numpy or the ``q4`` package.

- :func:`parse_job` validates a work message (SPEC §4) into a :class:`Job` or raises :class:`Rejection`.
- :meth:`Job.to_env` / :meth:`Job.from_env`: the per-run task environment (SPEC §5).
- Key helpers for the run layout (SPEC §3) and the launch records ``run=<id>/attempts/<n>.json``.
- Done message builders (``q4.done/v1``); a succeeded message is derived from the manifest alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DONE_SCHEMA = "q4.done/v1"
# \Z, not $: "$" also matches before a trailing newline, which would let "r\n" through.
RUN_ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
MODES = ("standard", "enhanced", "full")
OUTPUT_FORMATS = ("csv", "parquet")
DEFAULT_MODE = "standard"
DEFAULT_OUTPUT_FORMAT = "csv"
DEFAULT_SVD_K = 10
SVD_K_RANGE = (1, 1000)
#: What the task reads as a table (q4.tables: CSV_SUFFIXES + PARQUET_SUFFIXES), compared case-insensitively.
INPUT_SUFFIXES = (".csv", ".parquet", ".pq")
FIELDS = ("run_id", "input_key", "input_prefix", "mode", "model_key", "features", "svd_k", "output_format")
MAX_KEY_LENGTH = 1024
#: Values echoed in a rejection are cut to this many characters (a done message must fit in SQS's 256 KiB).
MAX_ECHO = 80
#: At most this many unknown field names are named in an ``unknown_field`` rejection.
MAX_ECHO_FIELDS = 5
# ECS RunTask limits (containerOverrides JSON <= 8192 chars; we leave room for the static part).
MAX_FEATURES_ENV_LENGTH = 6000
MAX_CLIENT_TOKEN_LENGTH = 64
MAX_STARTED_BY_LENGTH = 36
STARTED_BY_PREFIX = "q4:"

# Environment variable names of the task (SPEC §5).
ENV_RUN_ID = "Q4_RUN_ID"
ENV_INPUT_KEY = "Q4_INPUT_KEY"
ENV_INPUT_PREFIX = "Q4_INPUT_PREFIX"
ENV_MODE = "Q4_MODE"
ENV_MODEL_KEY = "Q4_MODEL_KEY"
# Models live where enhanced/full runs save them; the task role may read nothing else of the artifacts.
MODEL_KEY_SUFFIX = "/model/q4_model.json"
ENV_FEATURES = "Q4_FEATURES"
ENV_SVD_K = "Q4_SVD_K"
ENV_OUTPUT_FORMAT = "Q4_OUTPUT_FORMAT"
ENV_ATTEMPT = "Q4_ATTEMPT"
PER_RUN_ENV = (
    ENV_RUN_ID,
    ENV_INPUT_KEY,
    ENV_INPUT_PREFIX,
    ENV_MODE,
    ENV_MODEL_KEY,
    ENV_FEATURES,
    ENV_SVD_K,
    ENV_OUTPUT_FORMAT,
    ENV_ATTEMPT,
)


class Rejection(Exception):
    """A work message that must be rejected at once (never retried, never launched)."""

    def __init__(self, code: str, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.run_id = run_id


# ---------------------------------------------------------------- keys


def run_prefix(run_id: str) -> str:
    return f"run={run_id}/"


def input_root(run_id: str) -> str:
    """Where a run's inputs live in the archive bucket."""
    return f"run={run_id}/input/"


def job_key(run_id: str) -> str:
    return f"run={run_id}/job.json"


def manifest_key(run_id: str) -> str:
    return f"run={run_id}/MANIFEST.json"


def error_key(run_id: str) -> str:
    return f"run={run_id}/ERROR.json"


def attempts_prefix(run_id: str) -> str:
    return f"run={run_id}/attempts/"


def attempt_key(run_id: str, attempt: int) -> str:
    """The launch record of one attempt, written once after a successful RunTask."""
    return f"run={run_id}/attempts/{attempt}.json"


def is_input_object(key: str) -> bool:
    """Whether a key under an input prefix is read as part of the table (``.csv`` / ``.parquet``)."""
    return key.lower().endswith(INPUT_SUFFIXES)


def client_token(run_id: str, attempt: int) -> str:
    """ECS RunTask idempotency token for one attempt of a run (<= 64 ASCII characters)."""
    digest = hashlib.sha256(f"{run_id}\n{attempt}".encode()).hexdigest()[:40]
    return f"q4-{attempt}-{digest}"[:MAX_CLIENT_TOKEN_LENGTH]


def started_by(run_id: str) -> str:
    """ECS ``startedBy`` (<= 36 characters): marks tasks launched by the orchestrator."""
    return (STARTED_BY_PREFIX + run_id)[:MAX_STARTED_BY_LENGTH]


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

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (``job.json``): absent optional fields are left out."""
        doc: dict[str, Any] = {"run_id": self.run_id}
        if self.input_key is not None:
            doc["input_key"] = self.input_key
        if self.input_prefix is not None:
            doc["input_prefix"] = self.input_prefix
        doc["mode"] = self.mode
        if self.model_key is not None:
            doc["model_key"] = self.model_key
        if self.features is not None:
            doc["features"] = list(self.features)
        doc["svd_k"] = self.svd_k
        doc["output_format"] = self.output_format
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_env(self, attempt: int = 1) -> dict[str, str]:
        """The per-run task environment (RunTask container overrides); empty values are left out."""
        env = {
            ENV_RUN_ID: self.run_id,
            ENV_MODE: self.mode,
            ENV_SVD_K: str(self.svd_k),
            ENV_OUTPUT_FORMAT: self.output_format,
            ENV_ATTEMPT: str(attempt),
        }
        if self.input_key is not None:
            env[ENV_INPUT_KEY] = self.input_key
        if self.input_prefix is not None:
            env[ENV_INPUT_PREFIX] = self.input_prefix
        if self.model_key is not None:
            env[ENV_MODEL_KEY] = self.model_key
        if self.features is not None:
            env[ENV_FEATURES] = ",".join(self.features)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Job:
        """Rebuild the job from the task environment; raises :class:`Rejection` when it is not valid."""
        doc: dict[str, Any] = {}
        names = {
            ENV_RUN_ID: "run_id",
            ENV_INPUT_KEY: "input_key",
            ENV_INPUT_PREFIX: "input_prefix",
            ENV_MODE: "mode",
            ENV_MODEL_KEY: "model_key",
            ENV_OUTPUT_FORMAT: "output_format",
        }
        for env_name, field in names.items():
            value = environ.get(env_name, "")
            if value != "":
                doc[field] = value
        features = environ.get(ENV_FEATURES, "")
        if features != "":
            doc["features"] = features.split(",")
        svd_k = environ.get(ENV_SVD_K, "")
        if svd_k != "":
            try:
                doc["svd_k"] = int(svd_k)
            except ValueError:
                raise Rejection(
                    "invalid_svd_k",
                    f"{ENV_SVD_K}={svd_k!r} is not an integer; set it to an integer from 1 to 1000.",
                    doc.get("run_id"),
                ) from None
        return parse_job(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Job:
        return parse_job(doc)


def attempt_from_env(environ: Mapping[str, str]) -> int:
    """``Q4_ATTEMPT`` as a positive int (1 when absent or unusable)."""
    try:
        return max(1, int(environ.get(ENV_ATTEMPT, "1")))
    except ValueError:
        return 1


# ---------------------------------------------------------------- validation


def is_valid_run_id(run_id: str) -> bool:
    """SPEC §4: ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`` and no ``..``."""
    return bool(RUN_ID_PATTERN.match(run_id)) and ".." not in run_id


def _shown(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_ECHO` characters: rejections echo values but stay small."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 3] + "..."


def _has_control(text: str) -> bool:
    """Control characters, and what UTF-8 / S3's XML listings cannot carry (lone surrogates, U+FFFE/F)."""
    return any(
        ord(ch) < 32 or 127 <= ord(ch) < 160 or 0xD800 <= ord(ch) < 0xE000 or ch in "\ufffe\uffff"
        for ch in text
    )


def _check_key(field: str, value: object, run_id: str) -> str:
    if not isinstance(value, str):
        raise Rejection("invalid_type", f"'{field}' must be a string, got {type(value).__name__}.", run_id)
    if not value or len(value) > MAX_KEY_LENGTH:
        raise Rejection(
            "invalid_key",
            f"'{field}' must be a non-empty S3 key of at most {MAX_KEY_LENGTH} characters.",
            run_id,
        )
    if _has_control(value) or "\\" in value:
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
            f"'{field}' {_shown(value)} contains '.', '..' or empty path segments; "
            "give a plain key without them.",
            run_id,
        )
    return value


def _check_input(field: str, value: object, run_id: str) -> str:
    key = _check_key(field, value, run_id)
    root = input_root(run_id)
    if not key.startswith(root) or (key == root and field == "input_key"):
        raise Rejection(
            "wrong_prefix",
            f"'{field}' {_shown(key)} must lie under {root!r} in the archive bucket; upload the input there.",
            run_id,
        )
    return key


def parse_job(message: object) -> Job:
    """Validate a work message (a decoded JSON value) into a :class:`Job`; raises :class:`Rejection`."""
    if not isinstance(message, Mapping):
        raise Rejection(
            "invalid_message",
            "The work message must be a JSON object with at least "
            "'run_id' and 'input_key' or 'input_prefix'.",
        )
    raw_run_id = message.get("run_id")
    # an unusable run id travels back as the raw string only when it is of a sane length
    run_id_hint = raw_run_id if isinstance(raw_run_id, str) and len(raw_run_id) <= MAX_KEY_LENGTH else None
    unknown = sorted(str(name) for name in message if name not in FIELDS)
    if unknown:
        more = f" and {len(unknown) - MAX_ECHO_FIELDS} more" if len(unknown) > MAX_ECHO_FIELDS else ""
        raise Rejection(
            "unknown_field",
            f"Unknown field(s) {', '.join(_shown(n) for n in unknown[:MAX_ECHO_FIELDS])}{more}; allowed "
            f"fields are {', '.join(FIELDS)}.",
            run_id_hint,
        )
    if "run_id" not in message:
        raise Rejection("missing_field", "'run_id' is required.")
    if not isinstance(raw_run_id, str):
        raise Rejection("invalid_type", f"'run_id' must be a string, got {type(raw_run_id).__name__}.")
    run_id = raw_run_id
    if not is_valid_run_id(run_id):
        raise Rejection(
            "invalid_run_id",
            f"run_id {_shown(run_id)} is not valid; use 1-64 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit, without '..'.",
            run_id_hint,
        )

    has_key, has_prefix = message.get("input_key") is not None, message.get("input_prefix") is not None
    if has_key == has_prefix:
        raise Rejection("invalid_input", "Give exactly one of 'input_key' or 'input_prefix'.", run_id)
    input_key = _check_input("input_key", message["input_key"], run_id) if has_key else None
    if input_key is not None and not is_input_object(input_key):
        raise Rejection(
            "unsupported_input",
            f"'input_key' {_shown(input_key)} is neither a .csv nor a .parquet file; convert the table to "
            "CSV or Parquet, upload it and send the message again.",
            run_id,
        )
    input_prefix = None
    if has_prefix:
        input_prefix = _check_input("input_prefix", message["input_prefix"], run_id)
        if not input_prefix.endswith("/"):
            input_prefix += "/"

    mode = message.get("mode", DEFAULT_MODE)
    if not isinstance(mode, str):
        raise Rejection("invalid_type", f"'mode' must be a string, got {type(mode).__name__}.", run_id)
    if mode not in MODES:
        raise Rejection(
            "unknown_mode", f"Unknown mode {_shown(mode)}; use one of {', '.join(MODES)}.", run_id
        )

    model_key = message.get("model_key")
    if model_key is not None:
        model_key = _check_key("model_key", model_key, run_id)
        model_run = model_key.removeprefix("run=").removesuffix(MODEL_KEY_SUFFIX)
        if (
            not model_key.startswith("run=")
            or not model_key.endswith(MODEL_KEY_SUFFIX)
            or not RUN_ID_PATTERN.match(model_run)
            or ".." in model_run
        ):
            raise Rejection(
                "invalid_model_key",
                f"'model_key' {_shown(model_key)} is not a saved model; give the key of a model written by "
                f"an enhanced or full run: run=<run_id>{MODEL_KEY_SUFFIX}.",
                run_id,
            )

    features = message.get("features")
    if features is not None:
        if not isinstance(features, list) or not all(isinstance(name, str) for name in features):
            raise Rejection("invalid_type", "'features' must be a list of column names (strings).", run_id)
        if not features or any(name == "" or "," in name or _has_control(name) for name in features):
            raise Rejection(
                "invalid_features",
                "'features' must be a non-empty list of column names without commas, control characters "
                "or characters UTF-8 cannot encode.",
                run_id,
            )
        if len(set(features)) != len(features):
            raise Rejection("invalid_features", "'features' lists a column more than once.", run_id)
        if len(",".join(features)) > MAX_FEATURES_ENV_LENGTH:
            raise Rejection(
                "too_many_features",
                f"'features' is longer than {MAX_FEATURES_ENV_LENGTH} "
                "characters, more than an ECS task override can carry; name fewer columns or "
                "leave 'features' out to use every numeric column.",
                run_id,
            )
        features = tuple(features)

    svd_k = message.get("svd_k", DEFAULT_SVD_K)
    if isinstance(svd_k, bool) or not isinstance(svd_k, int):
        raise Rejection("invalid_type", f"'svd_k' must be an integer, got {type(svd_k).__name__}.", run_id)
    if not SVD_K_RANGE[0] <= svd_k <= SVD_K_RANGE[1]:
        raise Rejection("invalid_svd_k", f"'svd_k' is {svd_k}; use an integer from 1 to 1000.", run_id)

    output_format = message.get("output_format", DEFAULT_OUTPUT_FORMAT)
    if not isinstance(output_format, str):
        raise Rejection(
            "invalid_type", f"'output_format' must be a string, got {type(output_format).__name__}.", run_id
        )
    if output_format not in OUTPUT_FORMATS:
        raise Rejection(
            "unknown_output_format",
            f"Unknown output_format {_shown(output_format)}; use {' or '.join(OUTPUT_FORMATS)}.",
            run_id,
        )

    return Job(
        run_id=run_id,
        input_key=input_key,
        input_prefix=input_prefix,
        mode=mode,
        model_key=model_key,
        features=features,
        svd_k=svd_k,
        output_format=output_format,
    )


def task_state_change(body: str | bytes) -> dict[str, Any] | None:
    """The ECS Task State Change event a work-queue message carries (redriven from the DLQ), or None."""
    try:
        message = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if (
        isinstance(message, dict)
        and message.get("source") == "aws.ecs"
        and message.get("detail-type") == "ECS Task State Change"
    ):
        return message
    return None


def mode_hint(body: str | bytes) -> str | None:
    """The mode a rejected work message asked for (the default when it names none), if it is a valid one;
    the rejection's done message carries it."""
    try:
        message = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    mode = message.get("mode", DEFAULT_MODE)
    return mode if isinstance(mode, str) and mode in MODES else None


def parse_message_body(body: str | bytes) -> Job:
    """Decode and validate an SQS message body; raises :class:`Rejection` (and nothing else)."""
    try:
        message = json.loads(body)
    # ValueError: also bytes that are not UTF-8/16/32 and integers beyond Python's 4300-digit limit;
    # RecursionError: arrays/objects nested deeper than the interpreter's stack allows
    except (ValueError, TypeError, RecursionError):
        raise Rejection(
            "invalid_json",
            "The work message is not valid JSON; send a JSON object such as "
            '{"run_id": "...", "input_key": "run=<run_id>/input/<file>"}.',
        ) from None
    return parse_job(message)


# ---------------------------------------------------------------- done messages


def done_message(
    *,
    run_id: str | None,
    status: str,
    mode: str | None,
    artifacts_bucket: str,
    manifest: str | None = None,
    rows: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    attempt: int | None = None,
    duration_s: float | None = None,
    duplicate: bool = False,
) -> dict[str, Any]:
    """A ``q4.done/v1`` message (the fields of SPEC §4)."""
    doc: dict[str, Any] = {
        "schema": DONE_SCHEMA,
        "run_id": run_id,
        "status": status,
        "mode": mode,
        "artifacts_bucket": artifacts_bucket,
        "artifacts_prefix": run_prefix(run_id) if run_id and is_valid_run_id(run_id) else None,
        "attempt": attempt,
        "duration_s": duration_s,
        "duplicate": duplicate,
    }
    if status == "succeeded":
        doc["manifest_key"] = manifest
        doc["rows"] = dict(rows or {})
    else:
        doc["error"] = {"code": (error or {}).get("code"), "message": (error or {}).get("message")}
    return doc


def succeeded_done(
    manifest: Mapping[str, Any], artifacts_bucket: str, *, duplicate: bool = False
) -> dict[str, Any]:
    """The succeeded done message, derived from MANIFEST.json alone (a re-sent copy is identical)."""
    run_id = str(manifest["run_id"])
    duration = _duration_of(manifest)
    return done_message(
        run_id=run_id,
        status="succeeded",
        mode=manifest.get("mode"),
        artifacts_bucket=artifacts_bucket,
        manifest=manifest_key(run_id),
        rows=manifest.get("rows") or {},
        attempt=_attempt_of(manifest),
        duration_s=duration,
        duplicate=duplicate,
    )


def failed_done(
    error_doc: Mapping[str, Any], artifacts_bucket: str, *, mode: str | None = None, duplicate: bool = False
) -> dict[str, Any]:
    """The failed done message, derived from ERROR.json alone (plus the job's mode when known)."""
    return done_message(
        run_id=str(error_doc["run_id"]),
        status="failed",
        mode=_mode_of(error_doc) or mode,
        artifacts_bucket=artifacts_bucket,
        error=error_doc,
        attempt=_attempt_of(error_doc),
        duration_s=_duration_of(error_doc),
        duplicate=duplicate,
    )


def rejected_done(rejection: Rejection, artifacts_bucket: str, *, mode: str | None = None) -> dict[str, Any]:
    return done_message(
        run_id=rejection.run_id,
        status="rejected",
        mode=mode,
        artifacts_bucket=artifacts_bucket,
        error={"code": rejection.code, "message": rejection.message},
    )


def _mode_of(doc: Mapping[str, Any]) -> str | None:
    if isinstance(doc.get("mode"), str):
        return str(doc["mode"])
    job = doc.get("job")
    if isinstance(job, Mapping) and isinstance(job.get("mode"), str):
        return str(job["mode"])
    return None


def _duration_of(doc: Mapping[str, Any]) -> float | None:
    """``duration_s``, else the ``total`` of ``timings``, else the sum of the stage timings."""
    if isinstance(doc.get("duration_s"), int | float):
        return float(doc["duration_s"])
    timings = doc.get("timings")
    if not isinstance(timings, Mapping) or not timings:
        return None
    if isinstance(timings.get("total"), int | float):
        return round(float(timings["total"]), 3)
    return round(sum(float(v) for v in timings.values() if isinstance(v, int | float)), 3)


def _attempt_of(doc: Mapping[str, Any]) -> int | None:
    for name in ("attempt", "attempts"):
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    compute = doc.get("compute")
    if isinstance(compute, Mapping) and isinstance(compute.get("attempt"), int):
        return int(compute["attempt"])
    return None


# ---------------------------------------------------------------- ECS overrides and error documents

MAX_OVERRIDES_LENGTH = 8192
ERROR_SCHEMA = "q4.error/v1"


def notice_key(run_id: str) -> str:
    """Record of a done message the orchestrator sent for a run it recovered (sent once per event)."""
    return f"run={run_id}/attempts/done.json"


def container_overrides(job: Job, attempt: int, container_name: str) -> dict[str, Any]:
    """RunTask ``overrides`` carrying the per-run environment of one attempt."""
    environment = [{"name": name, "value": value} for name, value in sorted(job.to_env(attempt).items())]
    return {"containerOverrides": [{"name": container_name, "environment": environment}]}


def check_overrides_size(job: Job, container_name: str) -> None:
    """Reject a job whose task overrides would exceed the ECS limit of 8192 characters."""
    size = len(json.dumps(container_overrides(job, 999, container_name), separators=(",", ":")))
    if size > MAX_OVERRIDES_LENGTH:
        raise Rejection(
            "job_too_large",
            f"The job's task overrides take {size} characters, more than ECS "
            f"allows ({MAX_OVERRIDES_LENGTH}); use shorter keys or fewer features.",
            job.run_id,
        )


def error_document(
    *,
    run_id: str,
    code: str,
    message: str,
    mode: str | None,
    attempts: int,
    details: Mapping[str, Any] | None = None,
    retryable: bool = False,
) -> dict[str, Any]:
    """An ERROR.json (``q4.error/v1``) written by the orchestrator (``task_crashed``)."""
    return {
        "schema": ERROR_SCHEMA,
        "run_id": run_id,
        "status": "failed",
        "mode": mode,
        "code": code,
        "message": message,
        "details": dict(details or {}),
        "retryable": retryable,
        "attempts": attempts,
        "attempt": attempts,
    }
