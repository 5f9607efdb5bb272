"""Invoke a deployed Lambda function locally, as the Lambda Python runtime would.

Everything comes from the deployment: handler, environment, timeout and memory from
``GetFunction``; the code from the zip Terraform uploaded, checked against the function's
``CodeSha256``. Each invocation is a fresh ``python -S`` subprocess (a cold start) with only the
unpacked zip and the runtime's own packages (boto3 and its dependencies, from this interpreter)
on ``sys.path`` — never the q4 package — so a zip that is not self-contained fails here as on AWS.
:class:`Functions` is what the local runtime's stand-ins use: each deployed function loaded once, by name
or ARN, and invoked with the emulator's endpoint. An invocation's output goes to ``lambda.log`` as it comes
and to the function's log group (``LoggingConfig.LogGroup``, ``/aws/lambda/<name>`` by default), a stream per
invocation (each is a fresh execution environment) named as Lambda names them, sent when it ends.

An asynchronous event that failed all its attempts goes where Lambda sends it: the function's
``DeadLetterConfig`` target (read with :func:`dead_letter_target`), as :func:`dead_letter_message` builds it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from q4.errors import Q4Error

from q4_local import logs as q4_logs

_log = logging.getLogger("q4_local.runtime.lambda")
# What the AWS Lambda Python runtime puts on the path besides the function's code.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")
_BOOTSTRAP = Path(__file__).with_name("lambda_bootstrap.py")
#: Lambda truncates the ``ErrorMessage`` attribute of a dead-letter message to 1 KB.
DEAD_LETTER_ERROR_MESSAGE_BYTES = 1024


class LambdaCodeError(Q4Error):
    """The deployed function's code cannot be found or does not match what was deployed."""


@dataclass(frozen=True)
class DeployedFunction:
    """A function's configuration as deployed, plus where its unpacked code lives."""

    name: str
    arn: str
    handler: str
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int
    code_dir: Path
    log_group: str = ""  # LoggingConfig.LogGroup; /aws/lambda/<name> when empty

    def __post_init__(self) -> None:
        if not self.log_group:
            object.__setattr__(self, "log_group", f"/aws/lambda/{self.name}")


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation: the handler's return value, or a function error."""

    ok: bool
    result: Any
    error: str | None  # "<errorType>: <errorMessage>", for logs
    duration_s: float
    request_id: str = ""
    #: What Lambda's Invoke API answers: 200, for a function error or timeout too (flagged by
    #: ``X-Amz-Function-Error``); the local host has no throttling or service errors to answer otherwise.
    status_code: int = 200
    error_message: str | None = None  # the error's message alone (``errorMessage``, or the runtime's)


def code_sha256(zip_path: Path) -> str:
    """Lambda's ``CodeSha256``: base64 of the SHA-256 of the zip's bytes."""
    return base64.b64encode(hashlib.sha256(zip_path.read_bytes()).digest()).decode()


def load_function(lambda_client: Any, name: str, zip_path: Path, cache_dir: Path) -> DeployedFunction:
    """Read ``name``'s deployed configuration and unpack its code (once per code hash) under ``cache_dir``."""
    config = lambda_client.get_function(FunctionName=name)["Configuration"]
    deployed_sha = config.get("CodeSha256", "")
    if not zip_path.is_file():
        raise LambdaCodeError(
            "lambda_code_missing",
            f"The code zip of function {name} ({zip_path}) is gone; run `q4 local down` "
            "and `q4 local up` again.",
        )
    if code_sha256(zip_path) != deployed_sha:
        raise LambdaCodeError(
            "lambda_code_mismatch",
            f"{zip_path} is not the code deployed to function {name} (CodeSha256 differs); "
            "run `q4 local down` and `q4 local up` to redeploy.",
        )
    code_dir = cache_dir / hashlib.sha256(deployed_sha.encode()).hexdigest()[:16]
    if not code_dir.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        unpacking = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".unpacking-"))
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(unpacking)
        unpacking.replace(code_dir)
    return DeployedFunction(
        name=config["FunctionName"],
        arn=config["FunctionArn"],
        handler=config["Handler"],
        environment=dict(config.get("Environment", {}).get("Variables", {})),
        timeout_s=int(config.get("Timeout", 3)),
        memory_mb=int(config.get("MemorySize", 128)),
        code_dir=code_dir,
        log_group=str((config.get("LoggingConfig") or {}).get("LogGroup") or f"/aws/lambda/{name}"),
    )


def runtime_packages_dir(cache_dir: Path) -> Path:
    """A directory holding links to this interpreter's boto3 and its dependencies (the runtime's packages)."""
    target = cache_dir / "runtime-packages"
    target.mkdir(parents=True, exist_ok=True)
    for package in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        link = target / source.name
        if not link.exists():
            link.symlink_to(source, target_is_directory=source.is_dir())
    return target


def invoke(
    function: DeployedFunction,
    event: dict[str, Any],
    aws_env: dict[str, str],
    *,
    runtime_dir: Path,
    log_path: Path,
    request_id: str | None = None,
    logs: Any | None = None,
) -> Invocation:
    """Run the handler on ``event`` in a fresh subprocess; its output is appended to ``log_path`` as it
    comes and, when ``logs`` (a CloudWatch Logs client) is given, sent to the function's log group at the
    end of the invocation, in a stream of its own between Lambda's ``START``/``END``/``REPORT`` lines.

    ``request_id`` (a new UUID when None) is the invocation's id, returned in the :class:`Invocation` and
    passed as ``Q4_LOCAL_REQUEST_ID`` for the bootstrap.
    """
    request_id = request_id or str(uuid.uuid4())
    stream = q4_logs.lambda_stream_name()
    env = invocation_env(function, aws_env, request_id, log_stream=stream)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started, started_ms = time.monotonic(), q4_logs.now_ms()
    lines: list[q4_logs.Event] = [(started_ms, f"START RequestId: {request_id} Version: $LATEST")]
    with tempfile.TemporaryDirectory(prefix="q4-invoke-") as scratch:
        event_file = Path(scratch) / "event.json"
        result_file = Path(scratch) / "result.json"
        event_file.write_text(json.dumps(event))
        command = [
            sys.executable,
            "-S",
            str(_BOOTSTRAP),
            str(function.code_dir),
            str(runtime_dir),
            function.handler,
            str(event_file),
            str(result_file),
        ]
        timed_out = _run_teed(command, env, scratch, function.timeout_s, log_path, lines)
        duration = time.monotonic() - started
        outcome = json.loads(result_file.read_text()) if result_file.exists() else None
    if logs is not None:
        _ship_invocation(logs, function, stream, request_id, lines, duration, timed_out)
    if timed_out:
        message = f"Task timed out after {function.timeout_s} seconds"
        return _failure(message, message, duration, request_id)
    if outcome is None:
        message = "Runtime exited without a result"
        return _failure(message, message, duration, request_id)
    if outcome["ok"]:
        return Invocation(True, outcome["result"], None, duration, request_id=request_id)
    return _failure(
        f"{outcome['errorType']}: {outcome['errorMessage']}",
        str(outcome["errorMessage"]) or str(outcome["errorType"]),
        duration,
        request_id,
    )


def _run_teed(
    command: list[str],
    env: dict[str, str],
    cwd: str,
    timeout_s: int,
    log_path: Path,
    lines: list[q4_logs.Event],
) -> bool:
    """Run ``command``, appending its output to ``log_path`` as it comes and to ``lines`` (stamped with the
    time each was read); killed after ``timeout_s``. Returns whether it timed out."""
    with (
        open(log_path, "ab") as log,
        subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ) as process,
    ):
        assert process.stdout is not None
        output = process.stdout

        def tee() -> None:
            with contextlib.suppress(ValueError, OSError):  # the pipe closed under it (after a timeout)
                for line in output:
                    log.write(line)
                    log.flush()
                    lines.append((q4_logs.now_ms(), line.decode(errors="replace").rstrip("\n")))

        reader = threading.Thread(target=tee, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            timed_out = True
        reader.join(timeout=5)
    return timed_out


def _ship_invocation(
    logs: Any,
    function: DeployedFunction,
    stream: str,
    request_id: str,
    lines: list[q4_logs.Event],
    duration_s: float,
    timed_out: bool,
) -> None:
    """The invocation's lines, as Lambda writes them, to the function's log group (created when missing,
    as Lambda does); a failure to ship is logged, never an invocation failure."""
    end = q4_logs.now_ms()
    ms = duration_s * 1000
    if timed_out:
        lines.append((end, f"{request_id} Task timed out after {function.timeout_s:.2f} seconds"))
    lines.append((end, f"END RequestId: {request_id}"))
    lines.append(
        (
            end,
            f"REPORT RequestId: {request_id}\tDuration: {ms:.2f} ms\tBilled Duration: {math.ceil(ms)} ms\t"
            f"Memory Size: {function.memory_mb} MB",
        )
    )
    destination = q4_logs.Destination(function.log_group, stream)
    try:
        q4_logs.LogStream(logs, destination, create_group=True).put(lines)
    except Exception as exc:  # the invocation's outcome never depends on its logs
        _log.warning("could not ship the logs of %s to %s: %s", function.name, destination, exc)


def invocation_env(
    function: DeployedFunction, aws_env: dict[str, str], request_id: str, log_stream: str = ""
) -> dict[str, str]:
    """The invocation process's whole environment: the function's variables, the emulator's endpoint and
    credentials, what the Lambda runtime sets (``AWS_LAMBDA_*``, ``_HANDLER`` ...) and the bootstrap's
    ``Q4_LOCAL_*``; nothing else of the caller's."""
    log_stream = log_stream or q4_logs.lambda_stream_name()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        **function.environment,
        **aws_env,
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": function.log_group,
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "LAMBDA_TASK_ROOT": str(function.code_dir),
        "_HANDLER": function.handler,
        "Q4_LOCAL_FUNCTION_ARN": function.arn,
        "Q4_LOCAL_FUNCTION_TIMEOUT": str(function.timeout_s),
        "Q4_LOCAL_REQUEST_ID": request_id,
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _failure(error: str, message: str, duration_s: float, request_id: str) -> Invocation:
    """A function error or timeout: ``error`` for logs, ``message`` as Lambda reports it."""
    return Invocation(False, None, error, duration_s, request_id=request_id, error_message=message)


class Functions:
    """The deployed functions the local runtime invokes, each loaded once (by name or ARN) from the zip the
    local stack deployed, and invoked with the emulator's endpoint, their output appended to ``log_path``."""

    def __init__(
        self,
        lambda_client: Any,
        zips: dict[str, Path],
        cache_dir: Path,
        aws_env: dict[str, str],
        log_path: Path,
        logs: Any | None = None,
    ) -> None:
        """``logs``: a CloudWatch Logs client the invocations' output also goes to (None: only the file)."""
        self.lambda_client = lambda_client
        self.logs = logs
        self.zips = zips
        self.cache_dir = cache_dir
        self.aws_env = aws_env
        self.log_path = log_path
        self.runtime_dir = runtime_packages_dir(cache_dir)
        self.loaded: dict[str, DeployedFunction] = {}

    def get(self, name_or_arn: str) -> DeployedFunction:
        """The function ``name_or_arn`` names; :class:`LambdaCodeError` when its code is not available."""
        name = name_or_arn.split(":function:")[-1].split(":")[0]
        if name not in self.loaded:
            zip_path = self.zips.get(name)
            if zip_path is None:
                raise LambdaCodeError(
                    "lambda_code_missing", f"The local stack does not know the code zip of function {name}."
                )
            self.loaded[name] = load_function(self.lambda_client, name, zip_path, self.cache_dir)
        return self.loaded[name]

    def invoke(self, function: DeployedFunction, event: dict[str, Any]) -> Invocation:
        """A synchronous invocation of ``function`` with ``event`` (see :func:`invoke`)."""
        return invoke(
            function,
            event,
            self.aws_env,
            runtime_dir=self.runtime_dir,
            log_path=self.log_path,
            logs=self.logs,
        )


def dead_letter_target(lambda_client: Any, function: str) -> str | None:
    """The ARN of ``function``'s dead-letter queue or topic (its ``DeadLetterConfig``), None when it has none.

    Read when needed, as Lambda does when an asynchronous event has failed all its attempts.
    """
    config = lambda_client.get_function_configuration(FunctionName=function)
    target = (config.get("DeadLetterConfig") or {}).get("TargetArn")
    return str(target) if target else None


def dead_letter_message(event: dict[str, Any], failed: Invocation) -> tuple[str, dict[str, Any]]:
    """Body and SQS message attributes of the message Lambda sends to a function's DLQ for ``event``,
    whose last attempt was ``failed``: the event unchanged as the body; ``RequestID`` (String),
    ``ErrorCode`` (Number: the Invoke status) and ``ErrorMessage`` (String, truncated to 1 KB)."""
    message = failed.error_message or failed.error or "Unhandled"
    truncated = message.encode()[:DEAD_LETTER_ERROR_MESSAGE_BYTES].decode(errors="ignore") or "Unhandled"
    attributes = {
        "RequestID": {"DataType": "String", "StringValue": failed.request_id or str(uuid.uuid4())},
        "ErrorCode": {"DataType": "Number", "StringValue": str(failed.status_code)},
        "ErrorMessage": {"DataType": "String", "StringValue": truncated},
    }
    return json.dumps(event), attributes
