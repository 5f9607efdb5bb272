"""The least-privilege tests' view of the enforcing deployment (tests/security/conftest.py builds it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from q4_local import emulator

REGION = emulator.REGION


def is_denied(exc: ClientError) -> bool:
    """An authorization failure: S3's ``AccessDenied``, or moto's XML ``AccessDenied`` error on a JSON API
    (SQS, ECS: botocore cannot parse it, so the code is the HTTP status and the XML is the message)."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 403 and (
        error.get("Code") == "AccessDenied" or "<Code>AccessDenied</Code>" in str(error.get("Message", ""))
    )


@dataclass
class EnforcingStack:
    """The deployed stack, the credentials of each principal and what the programs need to run."""

    endpoint_url: str
    outputs: dict[str, Any]
    credentials: dict[str, dict[str, str]]  # principal -> boto3 credential kwargs
    lambda_env: dict[str, str]
    task_env: dict[str, str]
    scratch: Path
    roles: dict[str, str] = field(default_factory=dict)

    def client(self, principal: str, service: str) -> Any:
        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=REGION, **self.credentials[principal]
        )

    def process_env(self, principal: str, extra: Mapping[str, str]) -> dict[str, str]:
        """Environment of a program running as ``principal``: nothing of ours leaks in but PATH and HOME."""
        creds = self.credentials[principal]
        env = {
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOME": str(self.scratch),
            "LANG": "C.UTF-8",
            "MPLCONFIGDIR": str(self.scratch / ".matplotlib"),
            **extra,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if "aws_session_token" in creds:
            env["AWS_SESSION_TOKEN"] = creds["aws_session_token"]
        return env
