"""The Fargate task (``q4-task``): one task = one run.

Environment (docs/contract.md, Task environment and exit codes): the per-run job (``Q4_RUN_ID``,
``Q4_INPUT_KEY`` | ``Q4_INPUT_PREFIX``, ``Q4_MODE``, ``Q4_MODEL_KEY``, ``Q4_FEATURES``, ``Q4_SVD_K``,
``Q4_OUTPUT_FORMAT``, ``Q4_ATTEMPT``)
and the static ``Q4_INPUT_BUCKET``, ``Q4_ARTIFACTS_BUCKET``, ``Q4_DONE_QUEUE_URL``,
``Q4_CHUNK_ROWS``, ``Q4_SCRATCH_DIR``.

Steps: list the inputs (one key, or every CSV/Parquet under a prefix) and read them in place, streamed
with ranged GETs (q4.s3io: nothing is downloaded to scratch disk), run the same core as ``q4 run`` with
its row outputs going up as multipart uploads at their final keys under ``run=<id>/`` while pass 2
writes them, upload the documents (er.json, Q_study.json, model, plots), write ``MANIFEST.json`` last
with ``If-None-Match: *``, send the done message. Scratch disk holds only the model file, the documents
and the pass-1 spill when it fits (docs/decisions/runtime.md, "Streaming from and to S3").

Exit codes: 0 succeeded (also: already committed with the same job; nothing rewritten);
2 permanent failure (ERROR.json and the failed done message written; or a run that already
ended / belongs to another job: nothing written); 1 crash (transient AWS trouble, out of
memory or disk): the orchestrator relaunches it. 143: stopped before the commit (SIGTERM from ECS
StopTask, or a cancel request: docs/contract.md, "Cancel"), nothing written.

Logs: one JSON object per line on stdout, each with the run id and attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import q4_contract as contract
from botocore.exceptions import BotoCoreError, ClientError
from q4_contract import Job, Rejection, S3Store
from q4_contract import shards as shard_rules

from q4 import aws
from q4.cost import task_cost
from q4.errors import EXIT_CRASH, EXIT_OK, EXIT_PERMANENT, InputError, ModelError, Q4Error, TransientError
from q4.nopandas import keep_pandas_out
from q4.s3io import S3Source, S3Writer

logger = logging.getLogger("q4.task")
#: Exit code of a task that stopped before its commit (SIGTERM from ECS StopTask, or a cancel request it
#: read): 128 + SIGTERM, as if the signal had ended it. Not terminal: the orchestrator decides.
EXIT_STOPPED = 128 + signal.SIGTERM
_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# ---------------------------------------------------------------- logging


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the run's context and any extras."""

    def __init__(self, context: dict[str, Any]) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(doc, default=str)


def configure_logging(context: dict[str, Any]) -> None:
    """Route every log record (ours, the core's, Python warnings) through the JSON formatter."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter(context))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(os.environ.get("Q4_LOG_LEVEL", "INFO").upper())
    logging.captureWarnings(True)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class TaskSettings:
    """The static part of the task's environment (set in the task definition)."""

    input_bucket: str
    artifacts_bucket: str
    done_queue_url: str
    chunk_rows: int | None  # None: the core's default (JobSpec.chunk_rows)
    scratch_dir: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TaskSettings:
        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise aws.ConfigurationError(
                    "missing_configuration", f"{name} is not set; the task definition must set it."
                )
            return value

        try:
            raw = environ.get("Q4_CHUNK_ROWS", "").strip()
            chunk_rows = int(raw) if raw else None
        except ValueError:
            raise aws.ConfigurationError(
                "missing_configuration", "Q4_CHUNK_ROWS is not an integer; set it to a row count."
            ) from None
        return cls(
            input_bucket=required("Q4_INPUT_BUCKET"),
            artifacts_bucket=required("Q4_ARTIFACTS_BUCKET"),
            done_queue_url=required("Q4_DONE_QUEUE_URL"),
            chunk_rows=chunk_rows,
            scratch_dir=environ.get("Q4_SCRATCH_DIR") or None,
        )


def task_compute(environ: Mapping[str, str], attempt: int) -> dict[str, Any]:
    """``{task_arn, cpu, memory, attempt}`` from the ECS task metadata endpoint, else ``Q4_TASK_ARN``; plus
    ``image`` and ``image_id`` (its Image and ImageID) when the metadata names the container's image, the
    ephemeral storage it reserved, and how the orchestrator sized the task (:func:`task_sizing`)."""
    compute: dict[str, Any] = {"task_arn": environ.get("Q4_TASK_ARN") or None, "cpu": None, "memory": None}
    uri = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if uri:
        try:
            with urllib.request.urlopen(f"{uri}/task", timeout=2) as response:
                meta = json.loads(response.read())
            limits = meta.get("Limits") or {}
            compute.update(task_arn=meta.get("TaskARN"), cpu=limits.get("CPU"), memory=limits.get("Memory"))
            reserved = (meta.get("EphemeralStorageMetrics") or {}).get("Reserved")
            if isinstance(reserved, int | float):  # MiB
                compute["ephemeral_storage_gib"] = round(reserved / 1024)
            container: dict[str, Any] = next(iter(meta.get("Containers") or []), {})
            if container.get("Image"):  # the task's one container: the image it ran
                compute.update(image=container["Image"], image_id=container.get("ImageID"))
        except (OSError, ValueError) as exc:
            logger.warning("Could not read the ECS task metadata.", extra={"error": str(exc)})
    compute["attempt"] = attempt
    compute.update(task_sizing(environ))
    return compute


def scratch_limit(environ: Mapping[str, str]) -> int | None:
    """Bytes the task's ephemeral storage has left (``EphemeralStorageMetrics``: ``Reserved`` minus
    ``Utilized``, MiB, from the ECS task metadata; the local stand-in reports them too), None when unknown."""
    uri = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return None
    try:
        with urllib.request.urlopen(f"{uri}/task", timeout=2) as response:
            metrics = json.loads(response.read()).get("EphemeralStorageMetrics") or {}
    except (OSError, ValueError, AttributeError):
        return None
    reserved, used = metrics.get("Reserved"), metrics.get("Utilized") or 0
    if not isinstance(reserved, int | float) or not isinstance(used, int | float):
        return None
    return max(0, int((reserved - used) * 1024 * 1024))


def task_sizing(environ: Mapping[str, str]) -> dict[str, Any]:
    """How the orchestrator chose the task's size (docs/contract.md, "Task size"): ``sized_by``
    ``requested`` (the job's ``task_cpu``) or ``input_bytes``, and ``input_bytes`` it sized from. Empty when
    the orchestrator did not size the task (no ``Q4_INPUT_BYTES``)."""
    text = environ.get(contract.ENV_INPUT_BYTES, "").strip()
    if not (text.isascii() and text.isdigit()):
        return {}
    requested = environ.get(contract.ENV_TASK_CPU, "").strip() != ""
    return {
        "sized_by": contract.SIZED_BY_REQUEST if requested else contract.SIZED_BY_INPUT,
        "input_bytes": int(text),
    }


# ---------------------------------------------------------------- stopping (q4 cancel, ECS StopTask)


class TaskStopped(BaseException):
    """The task must stop without committing: ECS sent SIGTERM (StopTask: ``q4 cancel``, a scale-in...) or
    the run has a cancel request. A BaseException so that no ``except Exception`` turns it into a failure."""


class StopSignal:
    """The task's SIGTERM handler: it only notes the signal, and the task checks :meth:`check` between its
    steps (each input opened, each artifact uploaded, before writing MANIFEST.json or ERROR.json), so
    nothing is committed after it; the job itself is not interrupted (ECS sends SIGKILL after the container's
    stopTimeout). Raising from the handler instead would break whatever runs at that moment: an exception
    inside an import (pyarrow imports pandas lazily) leaves the module half made."""

    def __init__(self) -> None:
        self.received = False

    def check(self) -> None:
        """Raise :class:`TaskStopped` once SIGTERM has arrived."""
        if self.received:
            logger.warning("SIGTERM received; the task stops here and commits nothing.")
            raise TaskStopped("SIGTERM")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handler in place while the task runs (only the main thread can set one: elsewhere, as in a
        test calling :func:`run_task` from a thread, the default stands)."""
        try:
            previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True


def check_not_cancelled(store: S3Store, run_id: str, when: str) -> None:
    """Raise :class:`TaskStopped` when the run has a cancel request (docs/contract.md, "Cancel")."""
    request = contract.cancel_requested(store, run_id)
    if request is not None:
        logger.warning(
            f"The run has a cancel request; stopping {when}, nothing committed.",
            extra={"requested_at": request.get("requested_at")},
        )
        raise TaskStopped("cancel requested")


# ---------------------------------------------------------------- the task


class Task:
    """One run of the Q4 job between S3 and the done queue."""

    def __init__(self, job: Job, attempt: int, settings: TaskSettings, environ: Mapping[str, str]) -> None:
        self.job = job
        self.attempt = attempt
        self.settings = settings
        self.environ = environ
        self.s3 = aws.client("s3")
        self.sqs = aws.client("sqs")
        self.store = S3Store(self.s3, settings.artifacts_bucket)
        self.inputs: list[dict[str, Any]] = []
        self.compute: dict[str, Any] = {}
        self.stop = StopSignal()
        self.step = shard_step(environ)

    # ------------------------------------------------------------ entry

    def run(self) -> int:
        started = time.perf_counter()
        run_id = self.job.run_id
        with aws.aws_errors(f"read the state of run {run_id}"):
            ended = self._already_ended()
            if ended is None:
                check_not_cancelled(self.store, run_id, "before starting")
        if ended is not None:
            return ended
        self.compute = task_compute(self.environ, self.attempt)
        try:
            return self._process(started)
        except (TransientError, aws.ConfigurationError):
            raise
        except Q4Error as exc:  # bad input, a model that does not fit, …: permanent
            return self._fail(exc, started)

    def _already_ended(self) -> int | None:
        """Exit code when the run already ended (or belongs to another job); None to go on."""
        run_id = self.job.run_id
        ended = contract.ended_with(self.store, self.job)
        if ended is not None and ended.status == "succeeded":
            if ended.same_job:
                logger.info("Run already committed with the same job; nothing to do.")
                return EXIT_OK
            logger.error(
                "Run already committed with a different job; refused, nothing written.",
                extra={"difference": ended.difference},
            )
            return EXIT_PERMANENT
        if ended is not None:
            logger.error("Run already failed (ERROR.json exists); refused, nothing written.")
            return EXIT_PERMANENT
        accepted = self.store.job(run_id)
        if accepted is not None and contract.job_difference(accepted, self.job) is not None:
            logger.error("job.json holds a different job for this run; refused, nothing written.")
            return EXIT_PERMANENT
        return None

    def _process(self, started: float) -> int:
        from q4.job import JobSpec, run_job
        from q4.manifest import build_manifest

        run_id = self.job.run_id
        with tempfile.TemporaryDirectory(prefix="q4-task-", dir=self.settings.scratch_dir) as tmp:
            work = Path(tmp)
            clock = time.perf_counter()
            sources = self._input_sources()
            model_path = self._download_model(work / "model") if self.job.model_key else None
            download_s = time.perf_counter() - clock
            logger.info(
                "Opened the inputs (streamed from S3, nothing downloaded).",
                extra={"inputs": len(sources), "seconds": round(download_s, 3)},
            )

            spec = JobSpec(
                run_id=run_id,
                mode=self.job.mode,
                features=self.job.features,
                svd_k=self.job.svd_k,
                output_format=self.job.output_format,
                model_path=model_path,
                model_name=self.job.model_key,
                **({"chunk_rows": self.settings.chunk_rows} if self.settings.chunk_rows else {}),
            )
            if self.step is not None:  # one step of a sharded run (q4.shardtask)
                from q4.shardtask import ShardStep

                return ShardStep(self, self.step).run(started, spec, sources)
            run_dir = work / "out" / contract.run_prefix(run_id).rstrip("/")
            names, limit = [i["key"] for i in self.inputs], scratch_limit(self.environ)
            result = run_job(
                sources, run_dir, spec, input_names=names, sinks=self._sink_opener(), scratch_limit=limit
            )
            logger.info("Q4 job finished.", extra={"rows": result.rows, "spill": result.spill})

            clock = time.perf_counter()
            with aws.aws_errors(f"upload the artifacts of run {run_id}"):
                for artifact in result.artifacts:
                    self.stop.check()
                    if artifact.key in result.streamed:  # already at its key (a multipart upload)
                        continue
                    aws.upload(
                        self.s3,
                        self.settings.artifacts_bucket,
                        contract.run_prefix(run_id) + artifact.key,
                        run_dir / artifact.key,
                        artifact.content_type,
                    )
            upload_s = time.perf_counter() - clock
            timings = {
                "download": download_s,
                **result.timings,
                "upload": upload_s,
                "total": time.perf_counter() - started,
            }
            manifest = build_manifest(
                run_id=run_id,
                mode=self.job.mode,
                job=self.job.to_dict(),
                inputs=self.inputs,
                artifacts=[a.to_dict() for a in result.artifacts],
                rows=result.rows,
                timings=timings,
                compute=self.compute,
                warnings=result.warnings,
                spill=result.spill,
            )
        manifest["cost"] = task_cost(self.store, run_id, self.attempt, self.compute, self.environ)
        return self.commit(manifest, len(result.artifacts), result.rows, started)

    def commit(
        self, manifest: dict[str, Any], artifacts: int, rows: Mapping[str, int], started: float
    ) -> int:
        """Write MANIFEST.json once (unless stopped or cancelled) and send the done message; exit 0."""
        run_id = self.job.run_id
        with aws.aws_errors(f"commit run {run_id}"):
            self.stop.check()
            check_not_cancelled(self.store, run_id, "before the commit")
            if not self.store.put_json_once(contract.manifest_key(run_id), manifest):
                logger.info("Another task committed this run first; its done message stands.")
                return EXIT_OK
        logger.info("Committed the run (MANIFEST.json).", extra={"artifacts": artifacts})
        self._send_done(contract.succeeded_done(manifest, self.settings.artifacts_bucket))
        duration = round(time.perf_counter() - started, 3)
        logger.info("Run succeeded.", extra={"rows": dict(rows), "duration_s": duration})
        return EXIT_OK

    def _fail(self, exc: Q4Error, started: float) -> int:
        """End the run as failed: ERROR.json (once) and the failed done message; exit 2. A shard step's
        failure names the shard and the step in ``details``."""
        self.stop.check()
        earlier = None
        if self.step is not None:
            from q4.shardtask import ShardStep

            exc.details = {**(exc.details or {}), "shard": self.step.shard, "shard_step": self.step.step}
            earlier = ShardStep(self, self.step).earlier_usage  # the cost of every step so far
        return fail_run(
            self.store,
            self.sqs,
            self.settings,
            exc,
            run_id=self.job.run_id,
            attempt=self.attempt,
            job=self.job.to_dict(),
            inputs=self.inputs,
            compute=self.compute,
            started=started,
            earlier=earlier,
        )

    # ------------------------------------------------------------ S3 and SQS

    def _sink_opener(self) -> Callable[[str, str], S3Writer]:
        """Row outputs as multipart uploads at their final keys (a retry overwrites an earlier attempt's
        objects before its commit: their bytes are deterministic)."""
        prefix = contract.run_prefix(self.job.run_id)
        bucket = self.settings.artifacts_bucket
        return lambda key, content_type: S3Writer(self.s3, bucket, prefix + key, content_type)

    def _input_sources(self) -> list[S3Source]:
        """The inputs as S3 sources (size and ETag as listed); ``self.inputs`` lists them for the manifest."""
        bucket = self.settings.input_bucket
        base = contract.input_root(self.job.run_id)
        prefix = self.job.input_key if self.job.input_key is not None else str(self.job.input_prefix)
        with aws.aws_errors(f"list the inputs of run {self.job.run_id}"):
            listing = aws.list_keys(self.s3, bucket, prefix)
        if self.job.input_key is not None:
            keys = [item["Key"] for item in listing if item["Key"] == self.job.input_key]
        else:
            keys = [item["Key"] for item in listing if contract.is_input_object(item["Key"])]
        if not keys:
            where = (
                f"object s3://{bucket}/{prefix} does not exist"
                if self.job.input_key
                else (f"prefix s3://{bucket}/{prefix} holds no .csv or .parquet object")
            )
            raise InputError(
                "input_not_found", f"The input {where}; upload it and submit again under a new run id."
            )
        try:  # the same keys as when inputs were downloaded: one that could not be a file is refused
            aws.input_paths(Path("input"), [key.removeprefix(base) for key in keys])
        except aws.UnsafeKeyError as exc:
            raise InputError(
                "invalid_input_key",
                f"The input key {base + exc.key!r} has '.', '..' or empty path segments or a NUL character; "
                "rename the object.",
            ) from None
        listed = {item["Key"]: item for item in listing}
        sources = []
        for key in keys:
            size, etag = int(listed[key]["Size"]), str(listed[key].get("ETag", "")).strip('"')
            self.inputs.append({"key": key, "size": size, "etag": etag})
            sources.append(S3Source(self.s3, bucket, key, size, etag or None))
        return sources

    def _download_model(self, root: Path) -> Path:
        bucket, key = self.settings.artifacts_bucket, str(self.job.model_key)
        path = root / "q4_model.json"
        with aws.aws_errors(f"find the model s3://{bucket}/{key}"):
            found = contract.key_listed(self.s3, bucket, key)
        if not found:
            raise ModelError(
                "model_not_found",
                f"No model at s3://{bucket}/{key}; give the key of a q4_model.json written by an "
                "enhanced or full run.",
            )
        with aws.aws_errors(f"download the model s3://{bucket}/{key}"):
            aws.download(self.s3, bucket, key, path)
        return path

    def _send_done(self, message: Mapping[str, Any]) -> None:
        send_done(self.sqs, self.settings.done_queue_url, message)


def send_done(sqs: Any, queue_url: str, message: Mapping[str, Any]) -> None:
    with aws.aws_errors(f"send the done message of run {message['run_id']}"):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message, sort_keys=True))
    logger.info("Sent the done message.", extra={"status": message["status"]})


def fail_run(
    store: S3Store,
    sqs: Any,
    settings: TaskSettings,
    exc: Q4Error,
    *,
    run_id: str,
    attempt: int,
    job: Mapping[str, Any] | None,
    inputs: Sequence[Mapping[str, Any]] = (),
    compute: Mapping[str, Any] | None = None,
    started: float,
    earlier: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> int:
    """Write ERROR.json once and send the failed done message; the exit code to end with. ``earlier``: the
    usage of the run's earlier attempts when not the run's own (a sharded run's steps; q4.cost.task_cost)."""
    from q4.manifest import build_error

    logger.error("Run failed.", extra={"code": exc.code, "reason": exc.message, "details": exc.details})
    error_doc = build_error(
        run_id=run_id, error=exc, attempts=attempt, job=job, inputs=inputs, compute=compute or None
    )
    error_doc["duration_s"] = round(time.perf_counter() - started, 3)
    error_doc["cost"] = task_cost(store, run_id, attempt, compute, earlier=earlier)
    with aws.aws_errors(f"record the failure of run {run_id}"):
        if store.exists(contract.manifest_key(run_id)):
            logger.info("Another task committed this run meanwhile; no ERROR.json written.")
            return EXIT_OK
        if not store.put_json_once(contract.error_key(run_id), error_doc):
            logger.info("ERROR.json already exists; its done message stands.")
            return EXIT_PERMANENT
    send_done(sqs, settings.done_queue_url, contract.failed_done(error_doc, settings.artifacts_bucket))
    return EXIT_PERMANENT


def shard_step(environ: Mapping[str, str]) -> shard_rules.Step | None:
    """The sharded run's step this task runs (``Q4_SHARD_STEP``, ``Q4_SHARD``), None for an unsharded run;
    a value the contract does not define is a launch error (the task exits as a crash)."""
    step = shard_rules.step_from_env(environ)
    if step is None and environ.get(shard_rules.ENV_SHARD_STEP, "").strip():
        raise aws.ConfigurationError(
            "missing_configuration",
            f"{shard_rules.ENV_SHARD_STEP}={environ[shard_rules.ENV_SHARD_STEP]!r} with "
            f"{shard_rules.ENV_SHARD}={environ.get(shard_rules.ENV_SHARD)!r} is no step of a sharded run "
            "(pass1, pass2 or finish, and a shard index from 0).",
        )
    return step


# ---------------------------------------------------------------- entry point


def run_task(environ: Mapping[str, str]) -> int:
    """Run the task described by ``environ``; returns the exit code."""
    attempt = contract.attempt_from_env(environ)
    context: dict[str, Any] = {"run_id": environ.get(contract.ENV_RUN_ID) or None, "attempt": attempt}
    configure_logging(context)
    try:
        settings = TaskSettings.from_env(environ)
    except aws.ConfigurationError as exc:
        logger.error("Task misconfigured; exiting as a crash.", extra={"reason": exc.message})
        return EXIT_CRASH
    try:
        job = Job.from_env(environ)
    except Rejection as rejection:
        return _reject_environment(rejection, settings, context)
    try:
        task = Task(job, attempt, settings, environ)
    except aws.ConfigurationError as exc:
        logger.error("Task misconfigured; exiting as a crash.", extra={"reason": exc.message})
        return EXIT_CRASH
    if task.step is not None:
        context.update(shard=task.step.shard, shard_step=task.step.step)
    logger.info("Task started.", extra={"job": job.to_dict()})
    with task.stop.installed():
        try:
            return _guarded(task)
        except TaskStopped as stopped:
            logger.warning(
                "Task stopped before its commit; nothing committed.",
                extra={"reason": str(stopped), "exit_code": EXIT_STOPPED},
            )
            return EXIT_STOPPED


def _guarded(task: Task) -> int:
    """:meth:`Task.run`, its failures turned into exit codes (a crash, or ERROR.json ``internal_error``)."""
    try:
        return task.run()
    except TransientError as exc:
        logger.error(
            "Transient failure; exiting as a crash so the run is retried.",
            extra={"code": exc.code, "reason": exc.message},
            exc_info=exc.__cause__ is not None,
        )
        return EXIT_CRASH
    except Q4Error as exc:  # configuration trouble (credentials, permissions): retried as a crash
        logger.error("Task cannot go on.", extra={"code": exc.code, "reason": exc.message})
        return EXIT_CRASH
    except (ClientError, BotoCoreError, MemoryError, OSError):
        logger.exception("Crashed (AWS, memory or disk trouble); exiting as a crash so the run is retried.")
        return EXIT_CRASH
    except Exception as exc:  # a bug: retrying would fail the same way
        logger.exception("Unexpected error; the run fails with internal_error.")
        internal = Q4Error(
            "internal_error",
            f"The Q4 task failed unexpectedly ({type(exc).__name__}: {exc}); report this with the run id.",
        )
        try:
            return task._fail(internal, time.perf_counter())
        except Q4Error:
            return EXIT_CRASH


def _reject_environment(rejection: Rejection, settings: TaskSettings, context: dict[str, Any]) -> int:
    """A task started with an invalid job: record the failure when the run id allows it; exit 2."""
    logger.error(
        "The task's job environment is invalid.", extra={"code": rejection.code, "reason": rejection.message}
    )
    run_id = rejection.run_id
    if not run_id or not contract.is_valid_run_id(run_id):
        return EXIT_PERMANENT
    try:
        s3 = aws.client("s3")
        return fail_run(
            S3Store(s3, settings.artifacts_bucket),
            aws.client("sqs"),
            settings,
            InputError(rejection.code, rejection.message),
            run_id=run_id,
            attempt=int(context["attempt"]),
            job=None,
            started=time.perf_counter(),
        )
    except Q4Error:
        return EXIT_CRASH


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``q4-task``: the job comes from the environment, not from arguments."""
    if argv is None:  # the console script: its own process (q4.nopandas)
        keep_pandas_out()
        argv = sys.argv[1:]
    if argv:
        print(
            "q4-task takes no arguments; it reads its job from Q4_* environment variables.", file=sys.stderr
        )
        return EXIT_PERMANENT
    return run_task(os.environ)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
