"""Scores and quadrants (docs/contract.md, The Q4 operator, 5-6).

Q1: s1 ≥ 0, s2 ≥ 0 · Q2: s1 < 0, s2 ≥ 0 · Q3: s1 < 0, s2 < 0 · Q4: s1 ≥ 0, s2 < 0.
Keep (signal) = Q1 ∪ Q4, discard (noise) = Q2 ∪ Q3.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
KEEP = ("Q1", "Q4")
DISCARD = ("Q2", "Q3")


def scores(z: NDArray[np.float64], projectors: NDArray[np.float64]) -> NDArray[np.float64]:
    """``(m, 2)`` scores ``s1 = Z p1``, ``s2 = Z p2`` of standardized rows ``z``."""
    return np.ascontiguousarray(z @ projectors[:2].T)


def quadrant_labels(s: NDArray[np.float64]) -> NDArray[np.int8]:
    """Quadrant 1..4 of every row of scores ``s`` (shape ``(m, 2)``)."""
    right = s[:, 0] >= 0
    up = s[:, 1] >= 0
    labels = np.where(right, np.where(up, 1, 4), np.where(up, 2, 3))
    return labels.astype(np.int8)


def is_keep(labels: NDArray[np.int8]) -> NDArray[np.bool_]:
    """True for rows in Q1 or Q4 (signal)."""
    return (labels == 1) | (labels == 4)
