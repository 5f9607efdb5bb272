"""Errors a user can act on.

Exception hierarchy::

    Q4Error                      code, message (one actionable sentence), details, retryable
     ├── InputError              the input table or job is unusable (exit 2, ERROR.json)
     ├── ModelError              a saved model does not fit the input (exit 2, ERROR.json)
     ├── RunStateError           the run already ended / is committed (exit 2, nothing written)
     └── TransientError          S3/SQS trouble worth retrying (task exits 1: a crash, retried)

``code`` is the machine-readable error code that lands in ``ERROR.json`` and in
failed done messages (``too_few_rows``, ``model_mismatch``, …).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from q4_contract import Rejection

EXIT_OK = 0
EXIT_PERMANENT = 2
EXIT_CRASH = 1


def name_list(names: Sequence[str], limit: int = 10) -> str:
    """Column names for a message: quoted, each cut to 40 characters, at most ``limit`` of them.

    Error messages reach ERROR.json and the done message (SQS: 256 KiB at most) and must stay one line,
    whatever the input's header holds (10,000 columns, newlines in names).
    """
    shown = []
    for name in list(names)[:limit]:
        text = repr(name)
        shown.append(text if len(text) <= 40 else text[:37] + "...")
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


class Q4Error(Exception):
    """An error with a machine code and a sentence a user can act on."""

    exit_code: int = EXIT_PERMANENT
    retryable: bool = False

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        # one line whatever a file or column name holds: control characters are shown escaped
        message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "retryable": self.retryable,
        }


class InputError(Q4Error):
    """The input (table, features, job parameters) cannot be processed as given."""


class ModelError(Q4Error):
    """A saved model cannot be applied to this input."""


class RunStateError(Q4Error):
    """The run already ended (committed or failed); nothing is rewritten."""


class TransientError(Q4Error):
    """A passing failure (network, throttling); the task exits as a crash so it is retried."""

    exit_code = EXIT_CRASH
    retryable = True


@contextmanager
def contract_errors() -> Iterator[None]:
    """A job parameter that breaks the contract (a :class:`q4_contract.Rejection`) becomes an
    :class:`InputError` with the same code: one mistake, one code, in q4 run, q4 submit and a work message."""
    try:
        yield
    except Rejection as rejection:
        raise InputError(rejection.code, rejection.message) from None
