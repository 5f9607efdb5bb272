"""The run layout (docs/contract.md, "Artifact layout") and the ECS identifiers of a run's attempts."""

from __future__ import annotations

import hashlib

#: What the task reads as a table (q4.tables: CSV_SUFFIXES + PARQUET_SUFFIXES), compared case-insensitively.
#: A compressed CSV (gzip, bzip2, Zstandard) is CSV: it may sit beside plain CSV under one prefix.
INPUT_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".parquet", ".pq")
# Models live where enhanced/full runs save them; the task role may read nothing else of the artifacts.
MODEL_KEY_SUFFIX = "/model/q4_model.json"
MAX_CLIENT_TOKEN_LENGTH = 64
MAX_STARTED_BY_LENGTH = 36
STARTED_BY_PREFIX = "q4:"
MANIFEST_NAME = "MANIFEST.json"
ERROR_NAME = "ERROR.json"
JOB_NAME = "job.json"
CANCEL_NAME = "cancel.json"


def run_prefix(run_id: str) -> str:
    return f"run={run_id}/"


def input_root(run_id: str) -> str:
    """Where a run's inputs live in the archive bucket."""
    return f"run={run_id}/input/"


def job_key(run_id: str) -> str:
    return f"run={run_id}/{JOB_NAME}"


def manifest_key(run_id: str) -> str:
    return f"run={run_id}/{MANIFEST_NAME}"


def error_key(run_id: str) -> str:
    return f"run={run_id}/{ERROR_NAME}"


def cancel_key(run_id: str) -> str:
    """The run's cancel request (``q4 cancel``), written once."""
    return f"run={run_id}/{CANCEL_NAME}"


def attempts_prefix(run_id: str) -> str:
    return f"run={run_id}/attempts/"


def attempt_key(run_id: str, attempt: int) -> str:
    """The launch record of one attempt, written once after a successful RunTask."""
    return f"run={run_id}/attempts/{attempt}.json"


def notice_key(run_id: str) -> str:
    """Record of a done message the orchestrator sent for a run it recovered (sent once per event)."""
    return f"run={run_id}/attempts/done.json"


def is_input_object(key: str) -> bool:
    """Whether a key under an input prefix is read as part of the table (``.csv``, ``.csv.gz``,
    ``.csv.bz2``, ``.csv.zst``, ``.parquet``, ``.pq``; any case)."""
    return key.lower().endswith(INPUT_SUFFIXES)


def client_token(run_id: str, attempt: int) -> str:
    """ECS RunTask idempotency token for one attempt of a run (<= 64 ASCII characters)."""
    digest = hashlib.sha256(f"{run_id}\n{attempt}".encode()).hexdigest()[:40]
    return f"q4-{attempt}-{digest}"[:MAX_CLIENT_TOKEN_LENGTH]


def started_by(run_id: str) -> str:
    """ECS ``startedBy`` (<= 36 characters): marks tasks launched by the orchestrator."""
    return (STARTED_BY_PREFIX + run_id)[:MAX_STARTED_BY_LENGTH]
