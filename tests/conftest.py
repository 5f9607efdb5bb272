"""Shared fixtures: a real moto server over HTTP, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from q4.local import emulator


@pytest.fixture(scope="session")
def moto_server() -> Iterator[emulator.Emulator]:
    """A real moto server on a free loopback port, shared by the session (reset it for a clean one)."""
    server = emulator.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server: emulator.Emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 (and subprocesses inheriting os.environ) at the moto server for one test."""
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    return moto_server.env
