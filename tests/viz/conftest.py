"""Fixtures of the viz tests (the factories live in ``support.viz``)."""

from __future__ import annotations

import pytest
from support.viz import FullRun, make_full_run


@pytest.fixture
def full_run() -> FullRun:
    """A small, typical full-mode run (600 rows, 6 features)."""
    return make_full_run()
