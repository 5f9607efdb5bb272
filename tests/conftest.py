"""Shared fixtures: a real moto server over HTTP, started once per test session; and the head start of the
slow deployments (tests/headstart.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import headstart
import pytest
from q4_local import emulator


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start, in the background, every registered deployment a selected test needs."""
    if session.config.option.collectonly:
        return
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    factory = session.config._tmp_path_factory  # what the tmp_path_factory fixture returns
    started = headstart.start_needed(needed, lambda name: factory.mktemp(f"headstart-{name}"))
    if started:
        print(f"\nstarted in the background: {', '.join(started)}", file=sys.stderr)


def pytest_sessionfinish(session: pytest.Session) -> None:
    headstart.shutdown()


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
