"""A head start for the suite's three deployments (the real Terraform applied to a moto server).

Each apply takes ~110 s, and almost all of it is waiting: the AWS provider lets every SQS queue and S3
lifecycle configuration "settle" (25-55 s timers) while the CPUs sit idle. Run one after the other, the
three of them (``tests/infra``: ``deployed_stack``, ``tests/local``: ``stack``, ``tests/security``:
``enforcing_stack``) were ~335 s of a ~760 s suite. So each conftest *registers* its deployment here, and
as soon as collection is over (``pytest_collection_finish`` in ``tests/conftest.py``) every deployment
that a selected test needs starts in a background thread. The fixture then *takes* it: it waits for the
thread (or deploys right there, if nothing started it) and gets the result or the deployment's own
exception. Whatever was started is torn down when its fixture ends, or at the end of the session if no
test took it (``-x``, a keyboard interrupt).

Rules for an ``up`` function: it runs in a thread while tests run in the main one, so it never changes
``os.environ`` or the working directory, creates its boto3 clients from a session of its own (the
default session is not thread-safe), builds its subprocesses' environment from :data:`ENVIRON` (tests
running meanwhile may monkeypatch ``os.environ``), and cleans up after itself when it fails.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The environment as it was when the suite started, before any test could monkeypatch it.
ENVIRON: dict[str, str] = dict(os.environ)
#: How long the end of the session waits for a deployment nobody took before giving up on tearing it down.
SHUTDOWN_WAIT_S = 900.0


@dataclass
class _Deployment:
    up: Callable[[Path], Any]
    down: Callable[[Any], None]
    future: Future[Any] | None = None
    released: bool = False
    started_at: float = field(default=0.0)


_REGISTRY: dict[str, _Deployment] = {}
_LOCK = threading.Lock()


def register(fixture: str, up: Callable[[Path], Any], down: Callable[[Any], None]) -> None:
    """Declare the deployment behind ``fixture``: ``up(base_dir)`` builds it, ``down(result)`` removes it."""
    with _LOCK:
        _REGISTRY.setdefault(fixture, _Deployment(up, down))


def _start(name: str, deployment: _Deployment, base: Path) -> Future[Any]:
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(deployment.up(base))
        except BaseException as exc:  # handed to the fixture that takes it
            future.set_exception(exc)

    deployment.started_at = time.monotonic()
    threading.Thread(target=run, name=f"headstart-{name}", daemon=True).start()
    return future


def start_needed(fixture_names: Iterable[str], mktemp: Callable[[str], Path]) -> list[str]:
    """Start, in the background, each registered deployment among ``fixture_names``; returns their names."""
    needed = set(fixture_names)
    started = []
    with _LOCK:
        for name, deployment in _REGISTRY.items():
            if name in needed and deployment.future is None:
                deployment.future = _start(name, deployment, mktemp(name))
                started.append(name)
    return started


def take(fixture: str, mktemp: Callable[[str], Path]) -> Any:
    """The deployment's result, once it is up (started now if nothing started it); re-raises its error."""
    with _LOCK:
        deployment = _REGISTRY[fixture]
        if deployment.future is None:
            deployment.future = _start(fixture, deployment, mktemp(fixture))
    waited = time.monotonic()
    result = deployment.future.result()
    now = time.monotonic()
    print(
        f"\n{fixture}: up {now - deployment.started_at:.0f} s after its start, "
        f"{now - waited:.0f} s of it waited for here",
        file=sys.stderr,
    )
    return result


def release(fixture: str) -> None:
    """Tear down the deployment behind ``fixture`` (once) if it came up."""
    with _LOCK:
        deployment = _REGISTRY[fixture]
        if deployment.released or deployment.future is None:
            return
        deployment.released = True
        future = deployment.future
    if future.done() and future.exception() is None:
        deployment.down(future.result())


def shutdown() -> None:
    """End of session: tear down every deployment that was started and not released."""
    for name in list(_REGISTRY):
        deployment = _REGISTRY[name]
        if deployment.future is None or deployment.released:
            continue
        try:
            deployment.future.result(timeout=SHUTDOWN_WAIT_S)
        except BaseException:  # failed (it cleaned up after itself) or still hanging: nothing to remove
            continue
        release(name)
