"""Invoke a deployed Lambda function locally, as the Lambda Python runtime would.

Everything comes from the deployment: handler, environment, timeout and memory from
``GetFunction``; the code from the zip Terraform uploaded, checked against the function's
``CodeSha256``. Each invocation is a fresh ``python -S`` subprocess (a cold start) with only the
unpacked zip and the runtime's own packages (boto3 and its dependencies, from this interpreter)
on ``sys.path`` — never the q4 package — so a zip that is not self-contained fails here as on AWS.
:class:`Functions` is what the local runtime's stand-ins use: each deployed function loaded once, by name
or ARN, and invoked with the emulator's endpoint.

An asynchronous event that failed all its attempts goes where Lambda sends it: the function's
``DeadLetterConfig`` target (read with :func:`dead_letter_target`), as :func:`dead_letter_message` builds it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from q4.errors import Q4Error

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
) -> Invocation:
    """Run the handler on ``event`` in a fresh subprocess; its output is appended to ``log_path``.

    ``request_id`` (a new UUID when None) is the invocation's id, returned in the :class:`Invocation` and
    passed as ``Q4_LOCAL_REQUEST_ID`` for the bootstrap.
    """
    request_id = request_id or str(uuid.uuid4())
    env = invocation_env(function, aws_env, request_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
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
        with open(log_path, "ab") as log:
            try:
                subprocess.run(
                    command,
                    env=env,
                    cwd=scratch,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=function.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                message = f"Task timed out after {function.timeout_s} seconds"
                return _failure(message, message, time.monotonic() - started, request_id)
        duration = time.monotonic() - started
        if not result_file.exists():
            message = "Runtime exited without a result"
            return _failure(message, message, duration, request_id)
        outcome = json.loads(result_file.read_text())
    if outcome["ok"]:
        return Invocation(True, outcome["result"], None, duration, request_id=request_id)
    return _failure(
        f"{outcome['errorType']}: {outcome['errorMessage']}",
        str(outcome["errorMessage"]) or str(outcome["errorType"]),
        duration,
        request_id,
    )


def invocation_env(function: DeployedFunction, aws_env: dict[str, str], request_id: str) -> dict[str, str]:
    """The invocation process's whole environment: the function's variables, the emulator's endpoint and
    credentials, what the Lambda runtime sets (``AWS_LAMBDA_*``, ``_HANDLER`` ...) and the bootstrap's
    ``Q4_LOCAL_*``; nothing else of the caller's."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        **function.environment,
        **aws_env,
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
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
    ) -> None:
        self.lambda_client = lambda_client
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
        return invoke(function, event, self.aws_env, runtime_dir=self.runtime_dir, log_path=self.log_path)


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
