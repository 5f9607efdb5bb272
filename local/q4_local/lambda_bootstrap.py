"""Run one Lambda invocation the way the Python runtime would; started by q4_local.lambda_host.

Usage: ``python -S lambda_bootstrap.py CODE_DIR RUNTIME_DIR HANDLER EVENT_FILE RESULT_FILE``.

Runs with ``-S`` (no site-packages) and only CODE_DIR (the unpacked deployment zip) and
RUNTIME_DIR (what the Lambda runtime provides: boto3 and its dependencies) on ``sys.path``, so an
import the zip does not carry fails here as it would on AWS. Standard library only; this file is
never imported by the q4 package.
"""

import importlib
import json
import os
import sys
import time
import traceback
import uuid


class LambdaContext:
    """The attributes of the Python runtime's context object that handlers use."""

    def __init__(self, deadline: float) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = os.environ.get("Q4_LOCAL_FUNCTION_ARN", "")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = os.environ.get("Q4_LOCAL_REQUEST_ID") or str(uuid.uuid4())
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> int:
    code_dir, runtime_dir, handler, event_file, result_file = sys.argv[1:6]
    # Drop this script's own directory (inside the q4 package) from the path.
    sys.path[:] = [code_dir, runtime_dir] + [p for p in sys.path[1:] if "site-packages" not in p]
    timeout = float(os.environ.get("Q4_LOCAL_FUNCTION_TIMEOUT", "900"))
    deadline = time.monotonic() + timeout
    try:
        module_name, _, function_name = handler.rpartition(".")
        function = getattr(importlib.import_module(module_name), function_name)
        with open(event_file) as stream:
            event = json.load(stream)
        result = function(event, LambdaContext(deadline))
        outcome = {"ok": True, "result": result}
    except Exception as exc:  # the runtime reports any exception as a function error
        outcome = {
            "ok": False,
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc),
        }
        traceback.print_exc()
    with open(result_file, "w") as stream:
        json.dump(outcome, stream, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
