"""``q4 run INPUT... --out DIR``: the whole Q4 job locally, no AWS, written to ``DIR/run=<ID>/``.

Exit codes as the task (docs/contract.md, Task environment and exit codes): 0 succeeded, also when
``DIR/run=<ID>/`` already holds a run committed with the same job (nothing rewritten); 2 bad input
(ERROR.json written), or a run that already failed, or was committed with another job, or is being
written by another ``q4 run`` right now (then nothing is touched).

One writer per run directory: ``q4 run`` holds an exclusive ``flock`` on ``DIR/.run=<ID>.lock``
from before it looks at ``DIR/run=<ID>/`` until it has committed (MANIFEST.json) or failed
(ERROR.json). The kernel drops the lock when the process ends, however it ends, so a crashed run
never blocks the next one. The lock is for a local file system; network file systems may not
honour ``flock`` between machines.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import q4_contract as contract
from q4_contract.shards import check_shards

from q4.errors import InputError, Q4Error, RunStateError, contract_errors, name_list

if TYPE_CHECKING:
    from q4.job import JobSpec, RunResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the Q4 job locally on CSV/Parquet files (no AWS)",
        description="Run the Q4 job locally: read INPUT (CSV or Parquet; several files are one table), "
        "split rows into signal (Q1+Q4) and noise (Q2+Q3), and write DIR/run=<ID>/ exactly as the "
        "pipeline does. Exit code 0 on success (also when DIR/run=<ID>/ is already committed with the same "
        "job: nothing is rewritten), 2 on bad input, on a run id that already failed or holds another "
        "job, or while another q4 run writes that run.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="CSV or Parquet file(s)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where run=<ID>/ is written")
    parser.add_argument(
        "--run-id", metavar="ID", help="run id (default: <UTC yyyymmdd-HHMMSS.mmm>-<first input's name>)"
    )
    parser.add_argument(
        "--mode",
        default=contract.DEFAULT_MODE,
        metavar="|".join(contract.MODES),
        help="standard: split + energy; enhanced: + SVD and the model; full: + study, plots, report.html "
        f"(default {contract.DEFAULT_MODE})",
    )
    parser.add_argument(
        "--model", type=Path, metavar="FILE", help="apply this q4_model.json instead of fitting"
    )
    parser.add_argument(
        "--features", metavar="A,B", help="comma-separated feature columns (default: all numeric)"
    )
    low, high = contract.SVD_K_RANGE
    parser.add_argument(
        "--svd-k",
        default=str(contract.DEFAULT_SVD_K),
        metavar="K",
        help=f"SVD components ({low}..{high}, default {contract.DEFAULT_SVD_K})",
    )
    parser.add_argument(
        "--output-format",
        default=contract.DEFAULT_OUTPUT_FORMAT,
        metavar="|".join(contract.OUTPUT_FORMATS),
        help=f"row outputs format (default {contract.DEFAULT_OUTPUT_FORMAT})",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=65_536,
        metavar="N",
        help="rows per chunk; memory is bounded by this, not by the input (default 65536)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="run it as a sharded run of N slices, as the pipeline would (fewer for a small input; the same "
        "results; default 1: unsharded)",
    )
    parser.set_defaults(handler=handle)


def default_run_id(first_input: Path, now: datetime | None = None) -> str:
    """``<UTC yyyymmdd-HHMMSS.mmm>-<input stem sanitized>`` (:func:`q4_contract.default_run_id`)."""
    return contract.default_run_id(first_input.name, now)


def _features(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(
            "invalid_features", "--features is empty; name the feature columns, e.g. --features a,b."
        )
    return names


# ---------------------------------------------------------------- one writer per run directory


def lock_path(out: Path, run_id: str) -> Path:
    """The lock file of ``out/run=<run_id>/``: beside it, so the run directory holds only the run."""
    return out / f".run={run_id}.lock"


class RunBusy(Exception):
    """Another process holds the run's lock."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


class RunLock:
    """An exclusive, non-blocking ``flock`` on the run's lock file, held until :meth:`release`.

    The lock file holds the owner's pid (for the message of a second ``q4 run``). On release the
    file is unlinked *before* the lock is dropped; a process that opened the old file meanwhile
    sees, once it holds the lock, that the path no longer names its file and starts over, so two
    processes never both hold "the" lock. A lock file left by a killed process is not locked and
    is simply taken over.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> RunLock:
        """Raises :class:`RunBusy` when another process holds it, :class:`InputError` when it cannot
        be created or locked at all."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise InputError(
                    "output_not_writable",
                    f"Cannot create the lock file {path} ({exc.strerror}); "
                    "choose a writable --out directory.",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _lock_owner(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RunBusy(pid) from None
                raise InputError(
                    "output_not_lockable",
                    f"Cannot lock {path} ({exc.strerror}); q4 run needs its --out directory on a local "
                    "file system.",
                ) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(path, fd)
            os.close(fd)  # the owner we queued behind released and removed it: start over

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _lock_owner(fd: int) -> int | None:
    """The pid in a held lock file (the owner writes it right after locking: wait up to 0.5 s)."""
    for _ in range(50):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


# ---------------------------------------------------------------- a run that already ended


def _job_doc(spec: JobSpec) -> dict[str, Any]:
    """The job as q4 run records it: JobSpec's parameters plus the model file's sha256 (when readable)."""
    from q4.manifest import sha256_file

    doc = spec.to_job()
    if spec.model_path is not None:
        with contextlib.suppress(OSError):  # else the run fails (model_not_found); the path is recorded
            doc["model_sha256"] = sha256_file(spec.model_path)
    return doc


#: Job parameters that decide the results (chunk_rows does not: results never depend on it).
JOB_FIELDS = ("mode", "features", "svd_k", "output_format")


def _show(value: Any) -> str:
    if value is None:
        return "default"
    text = name_list([str(v) for v in value], limit=5) if isinstance(value, list) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def job_difference(
    recorded: Mapping[str, Any], job: Mapping[str, Any], inputs: Sequence[Path], *, by_content: bool
) -> str | None:
    """How the run ``recorded`` (a MANIFEST.json or ERROR.json) differs from this job; None if it does not.

    ``by_content`` (a committed run, whose manifest records each input's size and sha256): the
    inputs are the same when they have the same bytes, in the same order, whatever path reaches
    them. Otherwise (a failed run, whose inputs may not even exist): the same paths as given and,
    where recorded, the same sizes.
    """
    was = recorded.get("job")
    if not isinstance(was, Mapping):
        return "it records no job"
    for name in JOB_FIELDS:
        if was.get(name) != job.get(name):
            return f"{name} {_show(was.get(name))} there, {_show(job.get(name))} here"
    if (was.get("model_path") is None) != (job.get("model_path") is None):
        return "a model there, none here" if job.get("model_path") is None else "no model there, one here"
    if job.get("model_path") is not None:
        if "model_sha256" in was:
            if "model_sha256" not in job:
                return f"the model {job.get('model_path')} cannot be read"
            if was["model_sha256"] != job["model_sha256"]:
                return "another model file"
        elif was.get("model_path") != job.get("model_path"):
            return "another model path"
    listed = recorded.get("inputs")
    if listed is None and not by_content:
        return None  # an ERROR.json written before the inputs were known: nothing contradicts
    if not isinstance(listed, list) or not all(isinstance(i, Mapping) for i in listed):
        return "it records no inputs"
    if len(listed) != len(inputs):
        return f"{len(listed)} input file(s) there, {len(inputs)} here"
    return _inputs_difference(listed, inputs, by_content)


def _inputs_difference(
    listed: Sequence[Mapping[str, Any]], inputs: Sequence[Path], by_content: bool
) -> str | None:
    from q4.manifest import sha256_file

    for item, path in zip(listed, inputs, strict=True):
        size = _size(path)
        if not by_content and item.get("key") != str(path):
            return f"input {item.get('key')!s} there, {path} here"
        if by_content and size is None:
            return f"the input {path} cannot be read"
        if ("size" in item or by_content) and item.get("size") != size:
            return f"other bytes in the input {path}"
    if by_content:  # sizes all equal: compare the bytes
        for item, path in zip(listed, inputs, strict=True):
            try:
                digest = sha256_file(path)
            except OSError:
                return f"the input {path} cannot be read"
            if item.get("sha256") != digest:
                return f"other bytes in the input {path}"
    return None


def _ended(
    run_dir: Path, out: Path, spec: JobSpec, job: Mapping[str, Any], inputs: Sequence[Path]
) -> int | None:
    """The answer when ``run_dir`` already ended (printed, exit 0, or raised); None when it did not.

    A terminal document is written once and never replaced, so this needs no lock.
    """
    run_id = spec.run_id

    def differs(status: str, document: Mapping[str, Any]) -> str | None:
        return job_difference(document, job, inputs, by_content=status == "succeeded")

    try:
        ended = contract.run_ended(contract.DirectoryStore(out), run_id, differs)
    except contract.UnreadableDocument as exc:
        name = exc.key.rsplit("/", 1)[-1]
        raise RunStateError(
            "run_exists",
            f"Run {run_id} in {out} holds {'an' if name == contract.ERROR_NAME else 'a'} {name} that q4 "
            "cannot read as this run's; choose another --run-id.",
            {"run_dir": str(run_dir)},
        ) from None
    if ended is None:
        return None
    if ended.status == "succeeded":
        if not ended.same_job:
            raise RunStateError(
                "run_exists",
                f"Run {run_id} in {out} is already committed with another job ({ended.difference}); "
                "choose another --run-id.",
                {"run_dir": str(run_dir)},
            )
        print(f"q4: run {run_id} is already committed with the same job; nothing was rewritten.")
        print(f"q4: results in {run_dir}/ (MANIFEST.json lists every artifact)")
        return 0
    if not ended.same_job:
        raise RunStateError(
            "run_exists",
            f"Run {run_id} in {out} already failed with another job ({ended.difference}); "
            "choose another --run-id.",
            {"run_dir": str(run_dir)},
        )
    doc = ended.document
    message = str(doc.get("message") or doc.get("code") or "no reason recorded")
    raise RunStateError(
        "run_failed",
        f"Run {run_id} already failed with this job ({run_dir / contract.ERROR_NAME}): {message} "
        "A failed run is final: fix the cause and run again with another --run-id.",
        {"run_dir": str(run_dir), "code": doc.get("code")},
    )


def _size(path: Path) -> int | None:
    """The size of a regular file; None when it is not one or cannot be reached."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# ---------------------------------------------------------------- the command


def handle(args: argparse.Namespace) -> int:
    from q4.job import JobSpec

    started = time.perf_counter()
    # an explicit --run-id "" is refused like any other invalid id, not replaced by the default
    run_id = args.run_id if args.run_id is not None else default_run_id(args.inputs[0])
    with contract_errors():  # the same rules and codes as a work message
        svd_k = contract.svd_k_from_text(args.svd_k, "--svd-k ")
    spec = JobSpec(
        run_id=run_id,
        mode=args.mode,
        features=_features(args.features),
        svd_k=svd_k,
        output_format=args.output_format,
        model_path=args.model,
        chunk_rows=args.chunk_rows,
    )
    spec.validate()
    shards: int = args.shards
    with contract_errors():
        check_shards(shards)
    out: Path = args.out
    inputs: list[Path] = list(args.inputs)
    run_dir = out / f"run={run_id}"
    job = _job_doc(spec)
    ended = _ended(run_dir, out, spec, job, inputs)
    if ended is not None:
        return ended
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            "output_not_writable",
            f"Cannot create the output directory {out} ({exc.strerror}); choose a writable --out directory.",
        ) from None
    try:
        lock = RunLock.acquire(lock_path(out, run_id))
    except RunBusy as busy:
        ended = _ended(run_dir, out, spec, job, inputs)  # it may have just finished
        if ended is not None:
            return ended
        owner = f"pid {busy.pid}" if busy.pid is not None else "pid unknown"
        raise RunStateError(
            "run_busy",
            f"Run {run_id} is being written by another q4 run ({owner}) in {out}; "
            "wait for it or choose another --run-id.",
            {"run_dir": str(run_dir), "pid": busy.pid},
        ) from None
    with lock:
        ended = _ended(run_dir, out, spec, job, inputs)  # committed between the first look and the lock
        if ended is not None:
            return ended
        try:
            if run_dir.is_symlink() or run_dir.is_file():  # not a run directory q4 wrote: drop the name
                run_dir.unlink()
            elif run_dir.exists():  # leftovers of an interrupted run: clear them
                shutil.rmtree(run_dir)
            run_dir.mkdir()
        except OSError as exc:
            raise InputError(
                "output_not_writable",
                f"Cannot write the run directory {run_dir} ({exc.strerror}); "
                "choose a writable --out directory.",
            ) from None
        result = _run(spec, job, inputs, run_dir, out, shards)
        _commit(result, spec, job, run_dir, out, started)
    _summary(result, run_dir)
    return 0


def _run(
    spec: JobSpec, job: Mapping[str, Any], inputs: list[Path], run_dir: Path, out: Path, shards: int = 1
) -> RunResult:
    from q4.job import run_job
    from q4.manifest import MANIFEST_NAME, build_error, write_error

    names = [str(p) for p in inputs]
    try:
        if shards > 1:
            from q4.shards import run_sharded

            return run_sharded(inputs, run_dir, spec, shards, input_names=names)
        return run_job(inputs, run_dir, spec, progress=True, input_names=names)
    except RunStateError:  # another writer in the run directory: not this job's failure, record nothing
        raise
    except Q4Error as exc:
        recorded = [{"key": str(p), "size": _size(p)} for p in inputs]
        if not (run_dir / MANIFEST_NAME).exists():  # never both
            with contextlib.suppress(FileExistsError):  # an ERROR.json stands; this failure is printed
                write_error(run_dir, build_error(run_id=spec.run_id, error=exc, job=job, inputs=recorded))
        raise


def _commit(
    result: RunResult, spec: JobSpec, job: Mapping[str, Any], run_dir: Path, out: Path, started: float
) -> None:
    from q4.job import verify_unchanged
    from q4.manifest import build_manifest, write_manifest

    timings = {**result.timings, "total": time.perf_counter() - started}
    manifest = build_manifest(
        run_id=spec.run_id,
        mode=spec.mode,
        job=job,
        inputs=result.input_objects(),
        artifacts=[a.to_dict() for a in result.artifacts],
        rows=result.rows,
        timings=timings,
        warnings=result.warnings,
    )
    verify_unchanged(result)  # every sha256 listed is of the bytes on disk now
    try:
        write_manifest(run_dir, manifest)
    except FileExistsError:
        raise RunStateError(
            "run_changed",
            f"Run {spec.run_id} in {out} got a MANIFEST.json from another writer while this q4 run held "
            "its lock (is --out on a network file system?); that MANIFEST.json stands, but the files it "
            "lists may be this run's: run again with another --run-id.",
            {"run_dir": str(run_dir)},
        ) from None


def _summary(result: RunResult, run_dir: Path) -> None:
    rows = result.rows
    print(
        f"q4: run {result.run_id} succeeded: {rows['input']:,} rows -> {rows['keep']:,} keep (Q1+Q4), "
        f"{rows['discard']:,} discard (Q2+Q3), {rows['rejected']:,} rejected."
    )
    print(f"q4: results in {run_dir}/ (MANIFEST.json lists every artifact)")
    if result.report is not None:
        print(f"q4: report: {result.report}")
    for warning in result.warnings:
        print(f"q4: warning: {warning['message']}", file=sys.stderr)
