"""Fixtures for the core tests (helpers live in tests/support/tables.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20250825)
