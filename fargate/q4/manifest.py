"""The two terminal documents of a run: ``MANIFEST.json`` (commit marker) and ``ERROR.json``.

Both callers use these builders: ``q4 run`` (local files) and the Fargate task (S3, with
the input objects' ``{key, size, etag}`` and the compute ``{task_arn, cpu, memory}``).
Every argument is a JSON-able value; the builders add the schema and software versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from q4.errors import Q4Error

MANIFEST_SCHEMA = "q4.manifest/v1"
ERROR_SCHEMA = "q4.error/v1"
MANIFEST_NAME = "MANIFEST.json"
ERROR_NAME = "ERROR.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of q4, Python and the numeric libraries that shaped the results."""
    import numpy
    import pyarrow

    from q4 import __version__

    return {
        "q4": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


def build_manifest(
    *,
    run_id: str,
    mode: str,
    job: Mapping[str, Any],
    inputs: Sequence[Mapping[str, Any]],
    artifacts: Sequence[Mapping[str, Any]],
    rows: Mapping[str, int],
    timings: Mapping[str, float],
    compute: Mapping[str, Any] | None = None,
    warnings: Sequence[Mapping[str, str]] = (),
    spill: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``q4.manifest/v1`` document of a succeeded run.

    ``job``: the job parameters (mode, features, svd_k, output_format, model, …).
    ``inputs``: one dict per input object, e.g. ``{key, size, etag}`` (S3) or ``{key, size, sha256}``.
    ``artifacts``: ``{key, bytes, sha256, content_type}`` per artifact, keys relative to the run prefix.
    ``timings``: seconds per stage. ``compute``: ``{task_arn, cpu, memory}`` or the local machine.
    ``spill``: what pass 1 did with its spill (``{spilled, bytes, budget_bytes, reason}``), when given.
    """
    doc = {
        "schema": MANIFEST_SCHEMA,
        "run_id": run_id,
        "status": "succeeded",
        "mode": mode,
        "job": dict(job),
        "inputs": [dict(i) for i in inputs],
        "artifacts": [dict(a) for a in artifacts],
        "rows": dict(rows),
        "timings": {k: round(float(v), 6) for k, v in timings.items()},
        "warnings": [dict(w) for w in warnings],
        "software": software_versions(),
        "compute": dict(compute) if compute is not None else local_compute(),
    }
    if spill:
        doc["spill"] = dict(spill)
    return doc


def build_error(
    *,
    run_id: str,
    error: Q4Error | Mapping[str, Any],
    attempts: int = 1,
    job: Mapping[str, Any] | None = None,
    inputs: Sequence[Mapping[str, Any]] = (),
    compute: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``q4.error/v1`` document of a failed run.

    ``error`` is the :class:`Q4Error` raised, or a mapping with ``code``, ``message`` and
    optionally ``details`` / ``retryable`` (e.g. ``task_crashed`` from the orchestrator).
    """
    info = error.to_dict() if isinstance(error, Q4Error) else dict(error)
    doc: dict[str, Any] = {
        "schema": ERROR_SCHEMA,
        "run_id": run_id,
        "status": "failed",
        "code": str(info["code"]),
        "message": str(info["message"]),
        "details": dict(info.get("details") or {}),
        "retryable": bool(info.get("retryable", False)),
        "attempts": int(attempts),
    }
    if job is not None:
        doc["job"] = dict(job)
    if inputs:
        doc["inputs"] = [dict(i) for i in inputs]
    doc["software"] = software_versions()
    if compute is not None:
        doc["compute"] = dict(compute)
    return doc


def local_compute() -> dict[str, Any]:
    """Compute info for a local run: the machine (cpu = cores, memory = MiB), not a task."""
    try:
        memory: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "task_arn": None,
        "cpu": os.cpu_count(),
        "memory": memory,
        "host": platform.node(),
        "platform": platform.platform(),
    }


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes of a document (indented, no NaN / Infinity)."""
    return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_exclusive(path: Path, doc: Mapping[str, Any]) -> None:
    """Write a terminal document once: fails with :class:`FileExistsError` if it is already there.

    The bytes go to a uniquely named temporary file beside ``path`` (flushed to disk) and are
    hard-linked into place: ``link`` never replaces an existing file, so a MANIFEST.json or
    ERROR.json that another writer committed first stands, and a reader never sees a half-written one.
    """
    data = dumps(doc)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_document(path: Path) -> dict[str, Any] | None:
    """A terminal document as a dict; None when it is absent, unreadable or not a JSON object."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


def write_manifest(run_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Commit a local run: ``run_dir/MANIFEST.json``, exclusive create."""
    path = run_dir / MANIFEST_NAME
    write_exclusive(path, manifest)
    return path


def write_error(run_dir: Path, error: Mapping[str, Any]) -> Path:
    """End a local run as failed: ``run_dir/ERROR.json``, exclusive create."""
    path = run_dir / ERROR_NAME
    write_exclusive(path, error)
    return path
