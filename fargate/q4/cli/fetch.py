"""``q4 fetch``: download a finished run into ``DIR/run=<id>/``, complete and verified, or not at all."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import q4_contract as contract
from botocore.exceptions import ClientError

from q4 import aws
from q4.cli.common import Pipeline, check_run_id, out, printable, shown, unusable_in_a_key
from q4.errors import EXIT_OK, InputError, Q4Error, RunStateError

#: Far more than any run writes (a few KiB); a bigger MANIFEST.json is refused before it is read.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The run's own documents, fetched beside the artifacts; a manifest may not list them as artifacts.
RUN_DOCUMENTS = ("MANIFEST.json", "ERROR.json", "job.json")
SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fetch = subparsers.add_parser(
        "fetch",
        help="download a finished run's artifacts",
        description="Download a finished run to DIR/run=<RUN_ID>/: a succeeded run's MANIFEST.json, job.json "
        "and every artifact the manifest lists, each checked against its size and sha256; a failed run's "
        "ERROR.json and job.json. Everything is downloaded to a hidden directory in DIR first and renamed "
        "into place only when all of it checks out, so DIR/run=<RUN_ID>/ is either complete or absent. An "
        "existing DIR/run=<RUN_ID>/ is never overwritten unless --force is given.",
    )
    fetch.add_argument("run_id", metavar="RUN_ID")
    fetch.add_argument(
        "--to",
        type=Path,
        required=True,
        metavar="DIR",
        help="where run=<RUN_ID>/ is written (created if missing)",
    )
    fetch.add_argument(
        "--force",
        action="store_true",
        help="replace an existing DIR/run=<RUN_ID>/ (only once the new download is complete and verified)",
    )
    fetch.set_defaults(handler=handle_fetch)


@dataclass(frozen=True)
class _FinishedRun:
    """What the artifacts bucket holds for a finished run: its documents (raw) and every object listed."""

    run_id: str
    bucket: str
    prefix: str
    manifest: bytes | None
    error: bytes | None
    job: bytes | None
    listing: dict[str, dict[str, Any]]

    def documents(self) -> dict[str, bytes]:
        """The run's own documents that exist, by file name."""
        raws = (self.manifest, self.error, self.job)
        return {name: raw for name, raw in zip(RUN_DOCUMENTS, raws, strict=True) if raw is not None}


def handle_fetch(args: argparse.Namespace) -> int:
    """Download a finished run into ``DIR/run=<id>/``: complete and verified, or not at all.

    The plan (which objects, their sizes and sha256) comes from MANIFEST.json, is checked before any
    download (keys that are not plain relative paths, duplicates, a file that would also be a
    directory, sizes that differ from the bucket's, a lack of disk space), the objects go to a hidden
    staging directory beside the target, and the staging directory is renamed into place only when
    every file matches; on any failure it is removed.
    """
    run_id = check_run_id(args.run_id)
    pipeline = Pipeline()
    run = _read_finished_run(pipeline, run_id)
    artifacts: list[dict[str, Any]] = []
    if run.manifest is not None:
        artifacts = _artifacts_of(_manifest_doc(run.manifest, run_id), run_id)
        _check_against_bucket(artifacts, run.listing, run.bucket, run.prefix, run_id)
    destination: Path = args.to
    target = destination / run.prefix.rstrip("/")
    _prepare_destination(destination, target, args.force)
    _check_space(destination, run, artifacts)
    _download_into_place(pipeline.s3, run, artifacts, destination, target, args.force)
    _report_fetched(run, artifacts, target)
    return EXIT_OK


def _read_finished_run(pipeline: Pipeline, run_id: str) -> _FinishedRun:
    """The run's MANIFEST.json or ERROR.json, its job.json and its listing; refuses a run not finished."""
    bucket = pipeline.config.artifacts_bucket
    prefix = contract.run_prefix(run_id)
    with aws.aws_errors(f"read run {run_id}"):
        manifest_raw = _read_document(pipeline.s3, bucket, contract.manifest_key(run_id), run_id)
        error_raw = (
            None
            if manifest_raw is not None
            else _read_document(pipeline.s3, bucket, contract.error_key(run_id), run_id)
        )
        if manifest_raw is None and error_raw is None:
            state = pipeline.state(run_id).state
            raise RunStateError(
                "run_not_finished",
                f"Run {run_id} has not finished ({state}); wait for it (`q4 status {run_id}`) and fetch "
                "again."
                if state != "unknown"
                else f"No run {run_id} in s3://{bucket}; check the run id (`q4 runs`).",
            )
        job_raw = _read_document(pipeline.s3, bucket, contract.job_key(run_id), run_id)
        listing = {item["Key"]: item for item in aws.list_keys(pipeline.s3, bucket, prefix)}
    return _FinishedRun(run_id, bucket, prefix, manifest_raw, error_raw, job_raw, listing)


def _check_space(destination: Path, run: _FinishedRun, artifacts: list[dict[str, Any]]) -> None:
    needed = sum(a["bytes"] for a in artifacts) + sum(len(raw) for raw in run.documents().values())
    free = shutil.disk_usage(destination).free
    if needed > free:
        raise Q4Error(
            "no_space",
            f"Run {run.run_id} needs {needed:,} bytes but {destination} has {free:,} free; free some space "
            "or fetch to another --to directory.",
        )


def _download_into_place(
    s3: Any, run: _FinishedRun, artifacts: list[dict[str, Any]], destination: Path, target: Path, force: bool
) -> None:
    """Write the documents and the verified artifacts to a hidden staging directory in ``destination``,
    then rename it to ``target``; the staging directory is removed whatever happens."""
    staging = destination / f".{target.name}.fetch-{secrets.token_hex(6)}"
    try:
        os.mkdir(staging)
        for name, raw in run.documents().items():
            (staging / name).write_bytes(raw)
        with aws.aws_errors(f"download run {run.run_id}"):
            for artifact in artifacts:
                _download_verified(s3, run.bucket, run.prefix, artifact, staging, run.run_id)
        _move_into_place(staging, target, force)
    except OSError as exc:
        raise Q4Error(
            "fetch_write_failed",
            f"Cannot write run {run.run_id} to {destination} ({exc.strerror}); nothing was fetched — check "
            "the directory's permissions and free space, or fetch to another --to directory.",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def _report_fetched(run: _FinishedRun, artifacts: list[dict[str, Any]], target: Path) -> None:
    listed = {a["key"] for a in artifacts}
    skipped = [
        key
        for key in run.listing
        if not key.startswith(contract.attempts_prefix(run.run_id))
        and key.removeprefix(run.prefix) not in RUN_DOCUMENTS
        and key.removeprefix(run.prefix) not in listed
    ]
    if run.manifest is not None:
        out(
            f"q4: fetched run {run.run_id} (succeeded) to {target}: {len(artifacts)} artifacts, every size "
            "and sha256 checked against MANIFEST.json"
        )
    else:
        out(
            f"q4: fetched run {run.run_id} (failed) to {target}: ERROR.json"
            + (" and job.json" if run.job else "")
        )
        out(f"q4: the run failed: {_error_sentence(run.error)}")
    if skipped:
        what = "MANIFEST.json does not list them" if run.manifest is not None else "the run failed"
        where = f"s3://{run.bucket}/{run.prefix}"
        out(f"q4: left {len(skipped)} other objects under {where} in the bucket ({what})")


def _corrupt(run_id: str, problem: str) -> Q4Error:
    return Q4Error(
        "corrupt_manifest",
        f"MANIFEST.json of run {run_id} {problem}, so the run's artifacts cannot be trusted and nothing was "
        "fetched; report it to whoever runs the pipeline.",
    )


def _read_document(s3: Any, bucket: str, key: str, run_id: str) -> bytes | None:
    """The bytes of a run document, or None when there is none (a bounded read: a hostile 5 GB
    MANIFEST.json is refused, not loaded)."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if contract.is_not_found(exc) or (
            contract.is_denied(exc) and not contract.key_listed(s3, bucket, key)
        ):
            return None
        raise
    body = response["Body"]
    if int(response.get("ContentLength", 0)) > MAX_MANIFEST_BYTES:
        body.close()
        raise RunStateError(
            "corrupt_run",
            f"{key.removeprefix(contract.run_prefix(run_id))} of run {run_id} is "
            f"{int(response['ContentLength']):,} bytes, far more than any run writes, so it is not read and "
            "nothing was fetched; report it to whoever runs the pipeline.",
        )
    return bytes(body.read())


def _manifest_doc(raw: bytes, run_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # also bytes that are not UTF-8
        raise _corrupt(run_id, "is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _corrupt(run_id, f"is {_json_type(doc)}, not an object")
    if doc.get("run_id") != run_id:
        raise _corrupt(run_id, f"names another run ({shown(doc.get('run_id'))})")
    if doc.get("status", "succeeded") != "succeeded":
        raise _corrupt(run_id, f"has the status {shown(doc.get('status'))}, not 'succeeded'")
    return doc


def _json_type(value: object) -> str:
    if value is None:
        return "JSON null"
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return f"a JSON {names.get(type(value), type(value).__name__)}"


def _artifacts_of(manifest: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """The manifest's artifacts as ``{key, bytes, sha256}``, each key a safe relative file path."""
    listed = manifest.get("artifacts")
    if not isinstance(listed, list):
        raise _corrupt(run_id, "has no list of artifacts")
    artifacts: list[dict[str, Any]] = []
    files: dict[str, str] = {}  # case-folded path -> key: two keys, one file on macOS / Windows
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise _corrupt(run_id, f"lists artifact {i} as {_json_type(entry)}, not an object")
        key, size, digest = entry.get("key"), entry.get("bytes"), entry.get("sha256")
        if not isinstance(key, str) or not _safe_relative_key(key):
            raise _corrupt(
                run_id,
                f"lists the artifact key {shown(key)}, which is not a plain relative path below "
                f"run={run_id}/",
            )
        if key in RUN_DOCUMENTS or key.startswith("attempts/"):
            raise _corrupt(run_id, f"lists the run's own document {shown(key)} as an artifact")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _corrupt(run_id, f"gives {shown(key)} the size {shown(size)}, not a byte count")
        parts = entry.get("parts") if digest is None else None
        if parts is not None:  # a sharded run's row output: its pieces' sha256 (docs/contract.md)
            digest = _checked_parts(parts, size, key, run_id)
        elif not isinstance(digest, str) or not SHA256_HEX.match(digest):
            raise _corrupt(run_id, f"gives {shown(key)} the sha256 {shown(digest)}, not 64 hex digits")
        folded = key.casefold()
        if folded in files:
            raise _corrupt(run_id, f"lists {shown(key)} twice (or beside {shown(files[folded])})")
        files[folded] = key
        artifacts.append({"key": key, "bytes": size, "sha256": digest})
    for folded, key in files.items():
        parts = folded.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                raise _corrupt(
                    run_id,
                    f"lists {shown(files['/'.join(parts[:depth])])} both as a file and as the directory of "
                    f"{shown(key)}",
                )
    return artifacts


def _checked_parts(parts: object, size: int, key: str, run_id: str) -> list[tuple[int, str]]:
    """An artifact's ``parts`` (``{bytes, sha256}`` in order) as ``(bytes, sha256)`` pairs adding up to its
    size."""
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise _corrupt(run_id, f"gives {shown(key)} parts that are not a list of objects")
    pairs = []
    for part in parts:
        n, digest = part.get("bytes"), part.get("sha256")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise _corrupt(run_id, f"gives a part of {shown(key)} the size {shown(n)}, not a byte count")
        if not isinstance(digest, str) or not SHA256_HEX.match(digest):
            raise _corrupt(
                run_id, f"gives a part of {shown(key)} the sha256 {shown(digest)}, not 64 hex digits"
            )
        pairs.append((n, digest))
    if sum(n for n, _ in pairs) != size:
        raise _corrupt(run_id, f"gives {shown(key)} parts that do not add up to its {size:,} bytes")
    return pairs


def _matches(path: Path, digest: str | list[tuple[int, str]]) -> bool:
    """Whether the file's bytes have the sha256 ``digest``, or consist of parts of these sizes and sha256."""
    from q4.manifest import sha256_file

    if isinstance(digest, str):
        return sha256_file(path) == digest
    with path.open("rb") as f:
        for n, expected in digest:
            hasher = hashlib.sha256()
            left = n
            while left and (block := f.read(min(left, 8 << 20))):
                hasher.update(block)
                left -= len(block)
            if left or hasher.hexdigest() != expected:
                return False
    return True


def _safe_relative_key(key: str) -> bool:
    """A key below the run prefix that is one plain relative file path on every file system."""
    try:
        aws.local_path_for(Path("."), key)
    except aws.UnsafeKeyError:
        return False
    return not unusable_in_a_key(key) and all(
        len(part.encode("utf-8")) <= aws.MAX_NAME_BYTES for part in key.split("/")
    )


def _check_against_bucket(
    artifacts: list[dict[str, Any]], listing: dict[str, dict[str, Any]], bucket: str, prefix: str, run_id: str
) -> None:
    """Every artifact is in the bucket with the size the manifest gives, before anything is downloaded."""
    for artifact in artifacts:
        item = listing.get(prefix + artifact["key"])
        if item is None:
            raise Q4Error(
                "missing_artifact",
                f"{artifact['key']} is listed in MANIFEST.json of run {run_id} but missing from "
                f"s3://{bucket}/{prefix}, so the run is incomplete and nothing was fetched; report it to "
                "whoever runs the pipeline.",
            )
        if int(item["Size"]) != artifact["bytes"]:
            raise Q4Error(
                "checksum_mismatch",
                f"{artifact['key']} of run {run_id} is {int(item['Size']):,} bytes in s3://{bucket} but "
                f"{artifact['bytes']:,} in MANIFEST.json, so nothing was fetched; report it to whoever runs "
                "the pipeline.",
            )


def _prepare_destination(destination: Path, target: Path, force: bool) -> None:
    if destination.exists() and not destination.is_dir():
        raise InputError(
            "destination_not_directory",
            f"{destination} is a file, not a directory; give a directory for --to (created if missing).",
        )
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            "destination_not_directory",
            f"Cannot create {destination} ({exc.strerror}); give a directory you can write to with --to.",
        ) from None
    if os.path.lexists(target) and not force:
        raise RunStateError(
            "destination_exists",
            f"{target} already exists and `q4 fetch` never overwrites it; remove it, fetch to another --to "
            "directory, or add --force to replace it.",
        )


def _download_verified(
    s3: Any, bucket: str, prefix: str, artifact: dict[str, Any], staging: Path, run_id: str
) -> None:
    path = aws.local_path_for(staging, artifact["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, prefix + artifact["key"], str(path), Config=aws.TRANSFER_CONFIG)
    if path.stat().st_size != artifact["bytes"] or not _matches(path, artifact["sha256"]):
        raise Q4Error(
            "checksum_mismatch",
            f"{artifact['key']} of run {run_id} does not match its sha256 in MANIFEST.json, so nothing was "
            "fetched; fetch again, and report it to whoever runs the pipeline if it persists.",
        )


def _move_into_place(staging: Path, target: Path, force: bool) -> None:
    """Rename the verified staging directory to ``target``; with ``force`` an existing target is moved
    aside first and deleted only once the new one is in place."""
    os.chmod(staging, 0o777 & ~_umask())  # mkdir honoured the umask; make that explicit
    old: Path | None = None
    if force and os.path.lexists(target):
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
        os.rename(target, old)
    try:
        os.rename(staging, target)  # refuses a non-empty directory that appeared meanwhile
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()  # a file, or a symlink (never followed)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _error_sentence(raw: bytes | None) -> str:
    try:
        doc = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return "its ERROR.json is not valid JSON"
    if not isinstance(doc, dict):
        return "its ERROR.json is not a JSON object"
    return printable(doc.get("message") or doc.get("code") or "no message")
