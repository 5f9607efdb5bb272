"""Start and stop an embedded AWS emulator (moto server) on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"
# moto accepts any credentials; these make it obvious in logs that nothing real is used.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Emulator:
    """A running moto server process."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 and the `aws` CLI at this emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            **CREDENTIALS,
        }

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None, timeout: float = 30.0
) -> Emulator:
    """Start moto server on ``host:port`` (a free port when None) and wait until it answers.

    The server runs through :mod:`q4_local.moto_launcher`, which switches off moto's own
    SQS -> Lambda poller (the local runtime polls the work queue instead).
    """
    port = port or free_port(host)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    env = {**os.environ, **CREDENTIALS, "AWS_DEFAULT_REGION": REGION}
    # Keep the emulator from trying to reach Docker for Lambda invocations.
    env.setdefault("MOTO_DOCKER_NETWORK_MODE", "host")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "q4_local.moto_launcher", "-H", host, "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        if not isinstance(log, int):
            log.close()  # the child has its own copy of the descriptor
    endpoint = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return Emulator(endpoint, process)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout:.0f} s")


def reset(endpoint_url: str) -> None:
    """Forget every resource in the emulator (moto's reset API)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
