"""Streaming first and second moments of the valid rows, merged with Chan et al.'s update.

The accumulator keeps, per feature, a fixed *shift* ``K`` (the first valid row it ever
saw), the running mean of ``x - K`` and the co-moment matrix ``M2 = Σ (x - m)(x - m)ᵀ``.
Subtracting ``K`` first keeps the arithmetic exact when feature means are ~1e9 times
their standard deviations (``x - K`` is exact for values within a factor 2 of ``K``),
so a stream read in chunks of any size agrees with one read whole to ~1e-15. The job computes each
chunk's partial (:meth:`Moments.of`, its own shift) on a worker thread and merges them in chunk order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass
class Moments:
    """Count, mean, co-moment matrix, min and max of a stream of rows of ``d`` features.

    ``offset`` is the mean of ``x - shift``; the mean itself is ``shift + offset``.
    """

    d: int
    n: int = 0
    shift: Array = field(init=False)
    offset: Array = field(init=False)
    comoment: Array = field(init=False)
    minimum: Array = field(init=False)
    maximum: Array = field(init=False)

    def __post_init__(self) -> None:
        self.shift = np.zeros(self.d)
        self.offset = np.zeros(self.d)
        self.comoment = np.zeros((self.d, self.d))
        self.minimum = np.full(self.d, np.inf)
        self.maximum = np.full(self.d, -np.inf)

    @property
    def mean(self) -> Array:
        """The mean of every feature (rounded to the nearest double)."""
        return self.shift + self.offset

    def update(self, x: Array) -> None:
        """Add the rows of ``x`` (shape ``(m, d)``, all finite) to the moments."""
        m = x.shape[0]
        if m == 0:
            return
        if self.n == 0:
            self.shift = np.array(x[0], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by `finite`
            y = x - self.shift
            batch_offset = y.mean(axis=0)
            centred = y - batch_offset
            batch_comoment = centred.T @ centred
        self._merge(m, batch_offset, batch_comoment)
        np.minimum(self.minimum, x.min(axis=0), out=self.minimum)
        np.maximum(self.maximum, x.max(axis=0), out=self.maximum)

    @classmethod
    def of(cls, x: Array) -> Moments:
        """The moments of the rows ``x`` alone, shifted by their own first row: a chunk's partial, which
        :meth:`merge` adds exactly to the stream's (merged in chunk order, the same bits for any number of
        threads computing the partials)."""
        partial = cls(x.shape[1])
        partial.update(x)
        return partial

    def merge(self, other: Moments) -> None:
        """Add another accumulator's rows (its shift may differ from ours)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.shift = other.shift.copy()
        other_offset = (other.shift - self.shift) + other.offset
        self._merge(other.n, other_offset, other.comoment)
        np.minimum(self.minimum, other.minimum, out=self.minimum)
        np.maximum(self.maximum, other.maximum, out=self.maximum)

    def _merge(self, m: int, batch_offset: Array, batch_comoment: Array) -> None:
        n_a, n = self.n, self.n + m
        with np.errstate(over="ignore", invalid="ignore"):
            delta = batch_offset - self.offset
            self.offset = self.offset + delta * (m / n)
            self.comoment = self.comoment + batch_comoment + np.outer(delta, delta) * (n_a * m / n)
        self.n = n

    @property
    def finite(self) -> NDArray[np.bool_]:
        """Features whose sums of squares stayed finite (values beyond ~1e154 overflow float64)."""
        return np.asarray(np.isfinite(self.offset) & np.isfinite(np.diag(self.comoment)))

    @property
    def variance(self) -> Array:
        """Population variance (ddof = 0) of every feature."""
        return np.diag(self.comoment) / self.n if self.n else np.full(self.d, np.nan)

    @property
    def constant(self) -> NDArray[np.bool_]:
        """Features whose values are all equal (max == min)."""
        return np.asarray(self.maximum == self.minimum)
