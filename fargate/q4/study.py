"""The SVD section (enhanced) and the Q_study analysis (full) of ``Q_study.json``.

Everything here comes from eigenvalues and from per-quadrant moments of the standardized
rows accumulated in pass 2; nothing needs a third pass. Undefined numbers are ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from q4.model import json_number
from q4.moments import Moments
from q4.projectors import Standardization
from q4.quadrants import QUADRANTS

Array = NDArray[np.float64]

#: Eigenvalues under this fraction of λ1 count as zero (effective rank, condition number).
ZERO_RTOL = 1e-12


def _num(value: float) -> float | None:
    return json_number(float(value))


def _floats(values: Array) -> list[float | None]:
    return [_num(v) for v in np.asarray(values, dtype=np.float64)]


def svd_section(eigenvalues: Array, n_valid: int, k: int) -> dict[str, Any]:
    """Truncated SVD of Z at ``k`` from the eigenvalues ``λ`` of ``C = ZᵀZ/n`` (σ = sqrt(n·λ)).

    * explained-variance ratios are over all components (``λ_i / Σλ``);
    * effective rank is Roy & Vetterli's entropy rank ``exp(-Σ p log p)``, ``p = σ / Σσ``;
    * reconstruction error is ``‖Z - Z_k‖_F / ‖Z‖_F = sqrt(Σ_{i>k} λ_i / Σ λ)``.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = float(lam.sum())
    sigma = np.sqrt(n_valid * lam)
    ratio = lam / total if total > 0 else np.full_like(lam, np.nan)
    positive = sigma[sigma > 0]
    if positive.size:
        p = positive / positive.sum()
        effective_rank: float | None = float(math.exp(-float(np.sum(p * np.log(p)))))
    else:
        effective_rank = None
    residual = float(lam[k:].sum())
    error = math.sqrt(residual / total) if total > 0 else None
    return {
        "k": int(k),
        "singular_values": _floats(sigma[:k]),
        "explained_variance_ratio": _floats(ratio[:k]),
        "effective_rank": _num(effective_rank) if effective_rank is not None else None,
        "reconstruction_error": error,
    }


def anisotropy(eigenvalues: Array) -> dict[str, float | None]:
    """Shape of the spread from eigenvalues (descending) of a covariance of standardized rows.

    Zero eigenvalues (constant features, rank deficiency) are left out of the condition
    number, fractional anisotropy and sphericity, which describe the spread that exists.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    if lam.size == 0 or lam[0] <= 0:
        return {
            "lambda1_over_lambda2": None,
            "condition_number": None,
            "fractional_anisotropy": None,
            "sphericity": None,
        }
    ratio12 = lam[0] / lam[1] if lam.size > 1 and lam[1] > ZERO_RTOL * lam[0] else None
    nz = lam[lam > ZERO_RTOL * lam[0]]
    condition = nz[0] / nz[-1]
    d = nz.size
    if d > 1:
        fa = math.sqrt(d / (d - 1)) * float(np.linalg.norm(nz - nz.mean())) / float(np.linalg.norm(nz))
    else:
        fa = 1.0
    sphericity = math.exp(float(np.mean(np.log(nz)))) / float(nz.mean())
    return {
        "lambda1_over_lambda2": _num(ratio12) if ratio12 is not None else None,
        "condition_number": _num(condition),
        "fractional_anisotropy": _num(fa),
        "sphericity": _num(sphericity),
    }


@dataclass
class QuadrantStats:
    """Per-quadrant sums of the standardized rows (and min / max in original units).

    Standardized values are centred and of unit scale, so plain sums of ``z`` and ``zzᵀ`` in
    float64 lose nothing worth a shifted update here (unlike the raw data of pass 1).
    """

    d: int
    rows: NDArray[np.int64] = field(init=False)
    sums: Array = field(init=False)
    squares: Array = field(init=False)
    minimum: Array = field(init=False)
    maximum: Array = field(init=False)

    def __post_init__(self) -> None:
        self.rows = np.zeros(4, dtype=np.int64)
        self.sums = np.zeros((4, self.d))
        self.squares = np.zeros((4, self.d, self.d))
        self.minimum = np.full((4, self.d), np.inf)
        self.maximum = np.full((4, self.d), -np.inf)

    def update(self, x: Array, z: Array, labels: NDArray[np.int8]) -> None:
        for q in range(4):
            mask = labels == q + 1
            count = int(np.count_nonzero(mask))
            if not count:
                continue
            zq = z[mask]
            self.rows[q] += count
            self.sums[q] += zq.sum(axis=0)
            self.squares[q] += zq.T @ zq
            xq = x[mask]
            np.minimum(self.minimum[q], xq.min(axis=0), out=self.minimum[q])
            np.maximum(self.maximum[q], xq.max(axis=0), out=self.maximum[q])

    def merge(self, other: QuadrantStats) -> None:
        """Add another chunk's stats (computed on a worker thread); in chunk order the same bits as
        :meth:`update` chunk by chunk."""
        self.rows += other.rows
        self.sums += other.sums
        self.squares += other.squares
        np.minimum(self.minimum, other.minimum, out=self.minimum)
        np.maximum(self.maximum, other.maximum, out=self.maximum)

    @property
    def moments(self) -> list[Moments]:
        """Count, mean and co-moments of each quadrant's standardized rows."""
        out = []
        for q in range(4):
            m = Moments(self.d)
            n = int(self.rows[q])
            if n:
                mean = self.sums[q] / n
                m.n = n
                m.offset = mean
                m.comoment = self.squares[q] - n * np.outer(mean, mean)
            out.append(m)
        return out


def _group(moments: Sequence[Moments], d: int) -> Moments:
    merged = Moments(d)
    for m in moments:
        merged.merge(m)
    return merged


def _covariance_eigenvalues(m: Moments) -> Array:
    if m.n < 2:
        return np.zeros(0)
    cov = m.comoment / m.n
    return np.sort(np.linalg.eigvalsh(0.5 * (cov + cov.T)))[::-1]


def study_section(
    stats: QuadrantStats, std: Standardization, eigenvalues: Array, projectors: Array
) -> dict[str, Any]:
    """The ``study`` section of Q_study.json (full mode)."""
    d = stats.d
    quadrants: dict[str, Any] = {}
    per_quadrant: dict[str, Any] = {}
    moments = stats.moments
    for q, name in enumerate(QUADRANTS):
        m = moments[q]
        if m.n:
            mean = std.mean + std.scale * m.mean
            sd = std.scale * np.sqrt(m.variance)
            quadrants[name] = {
                "rows": m.n,
                "mean": _floats(mean),
                "std": _floats(sd),
                "min": _floats(stats.minimum[q]),
                "max": _floats(stats.maximum[q]),
            }
        else:
            nothing: list[float | None] = [None] * d
            quadrants[name] = {"rows": 0, "mean": nothing, "std": nothing, "min": nothing, "max": nothing}
        shape = anisotropy(_covariance_eigenvalues(m))
        per_quadrant[name] = {
            "rows": m.n,
            "lambda1_over_lambda2": shape["lambda1_over_lambda2"],
            "fractional_anisotropy": shape["fractional_anisotropy"],
        }
    keep = _group([moments[0], moments[3]], d)
    discard = _group([moments[1], moments[2]], d)
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    loadings = projectors[:2] * np.sqrt(lam[:2])[:, None]
    return {
        "quadrants": quadrants,
        "keep_vs_discard": _keep_vs_discard(keep, discard, std),
        "loadings": [_floats(row) for row in loadings],
        "anisotropy": {**anisotropy(lam), "per_quadrant": per_quadrant},
    }


def _keep_vs_discard(keep: Moments, discard: Moments, std: Standardization) -> dict[str, Any]:
    """Means in original units and Cohen's d (pooled sample std, ddof = 1) per feature."""
    d = keep.d
    none: list[float | None] = [None] * d
    mean_keep = _floats(std.mean + std.scale * keep.mean) if keep.n else none
    mean_discard = _floats(std.mean + std.scale * discard.mean) if discard.n else none
    effect: list[float | None] = list(none)
    if keep.n >= 2 and discard.n >= 2:
        pooled = np.sqrt((np.diag(keep.comoment) + np.diag(discard.comoment)) / (keep.n + discard.n - 2))
        diff = keep.mean - discard.mean
        for j in range(d):
            if pooled[j] > 0 and not std.constant[j]:
                effect[j] = _num(diff[j] / pooled[j])
    return {"mean_keep": mean_keep, "mean_discard": mean_discard, "effect_size": effect}
