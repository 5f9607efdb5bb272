"""A run's state in the artifacts bucket: the contract's S3 store under its old names.

:class:`RunStore` is :class:`q4_contract.S3Store` (job.json, launch records, MANIFEST.json, ERROR.json, the
run's state from the bucket alone); the error-code helpers are the contract's. New code imports them from
``q4_contract``.
"""

from __future__ import annotations

from q4_contract import (
    DENIED_CODES,
    NOT_FOUND_CODES,
    PRECONDITION_CODES,
    RunState,
    is_denied,
    is_not_found,
    is_precondition_failed,
    key_listed,
)
from q4_contract import S3Store as RunStore
from q4_contract import aws_error_code as error_code

__all__ = [
    "DENIED_CODES",
    "NOT_FOUND_CODES",
    "PRECONDITION_CODES",
    "RunState",
    "RunStore",
    "error_code",
    "is_denied",
    "is_not_found",
    "is_precondition_failed",
    "key_listed",
]
