"""Factories for realistic full-mode inputs of ``render_plots`` / ``render_report``.

The numbers are computed from synthetic data with plain numpy (PCA of the correlation matrix), so the
documents are self-consistent the way ``q4.job`` produces them; they are test data, not the Q4 core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FullRun:
    """Everything ``render_plots`` and ``render_report`` receive for one synthetic run."""

    er: dict[str, Any]
    study: dict[str, Any]
    scores: np.ndarray
    quadrants: np.ndarray
    svd_scores: np.ndarray | None
    correlation: np.ndarray


def _quadrant_of(scores: np.ndarray) -> np.ndarray:
    s1, s2 = scores[:, 0], scores[:, 1]
    return np.where(s1 >= 0, np.where(s2 >= 0, 1, 4), np.where(s2 >= 0, 2, 3)).astype(np.int64)


def _anisotropy(eig: np.ndarray) -> dict[str, Any]:
    positive = eig[eig > 0]
    mean = eig.mean()
    fa = math.sqrt(len(eig) / (len(eig) - 1) * ((eig - mean) ** 2).sum() / (eig**2).sum())
    return {
        "lambda1_over_lambda2": float(eig[0] / eig[1]) if eig[1] > 0 else None,
        "condition_number": float(eig[0] / eig[-1]) if eig[-1] > 1e-12 * eig[0] else None,
        "fractional_anisotropy": fa,
        "sphericity": float(np.exp(np.log(positive).mean()) / mean) if len(positive) == len(eig) else 0.0,
    }


def make_full_run(
    n: int = 600,
    d: int = 6,
    *,
    seed: int = 0,
    features: list[str] | None = None,
    constant: int = 0,
    rejected: int = 0,
    with_svd: bool = True,
    sample: int = 100_000,
) -> FullRun:
    """A full-mode run over ``n`` rows and ``d`` features (the last ``constant`` of them constant)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    mixing = rng.normal(size=(3, d))
    x = latent @ mixing + 0.5 * rng.normal(size=(n, d)) + rng.uniform(-5, 5, size=d)
    if constant:
        x[:, d - constant :] = 7.0
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    is_constant = np.ptp(x, axis=0) == 0
    scale[is_constant] = 1.0
    z = (x - mean) / scale
    z[:, is_constant] = 0.0
    u, singular, vt = np.linalg.svd(z, full_matrices=False)
    eig = np.zeros(d)
    eig[: len(singular)] = singular**2 / n
    vec = vt[:2].T.copy()
    signs = np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(2)])
    vec = vec * signs
    projectors = vec[:, :2].T
    scores = z @ projectors.T
    quadrants = _quadrant_of(scores)
    energy = (z**2).sum(axis=1)
    projected = (scores**2).sum(axis=1)
    total = float(energy.sum())
    names = features or [f"feature_{i}" for i in range(d)]

    def part(mask: np.ndarray) -> dict[str, Any]:
        return {
            "rows": int(mask.sum()),
            "energy": float(energy[mask].sum()),
            "fraction": float(energy[mask].sum() / total),
        }

    quadrant_docs = {
        f"Q{q}": {**part(quadrants == q), "projected_energy": float(projected[quadrants == q].sum())}
        for q in range(1, 5)
    }
    keep, discard = np.isin(quadrants, (1, 4)), np.isin(quadrants, (2, 3))
    snr = float(energy[keep].sum() / energy[discard].sum())
    er = {
        "schema": "q4.er/v1",
        "total_energy": total,
        "quadrants": quadrant_docs,
        "keep": {"quadrants": ["Q1", "Q4"], **part(keep)},
        "discard": {"quadrants": ["Q2", "Q3"], **part(discard)},
        "snr": snr,
        "snr_db": 10 * math.log10(snr),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.corrcoef(x, rowvar=False)
        pooled = np.sqrt((x[keep].var(axis=0) + x[discard].var(axis=0)) / 2)
        effect = (x[keep].mean(axis=0) - x[discard].mean(axis=0)) / pooled
    effect_list = [None if not np.isfinite(v) else float(v) for v in effect]
    loadings = projectors * np.sqrt(eig[:2])[:, None]
    k = min(10, d, n)
    per_quadrant = {}
    for q in range(1, 5):
        rows = z[quadrants == q]
        e = np.zeros(d)
        part_values = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False)
        e[: len(part_values)] = part_values**2 / len(rows)
        per_quadrant[f"Q{q}"] = {
            "rows": len(rows),
            "lambda1_over_lambda2": float(e[0] / e[1]),
            "fractional_anisotropy": _anisotropy(e)["fractional_anisotropy"],
        }
    warnings = []
    if constant:
        warnings.append(
            {"code": "constant_columns", "message": f"{constant} constant column(s) carry no signal."}
        )
    study: dict[str, Any] = {
        "schema": "q4.study/v1",
        "run_id": "2025-08-25-001",
        "mode": "full",
        "input": {
            "keys": ["run=2025-08-25-001/input/mydata.csv"],
            "bytes": 123_456,
            "format": "csv",
            "sha256": ["ab" * 32],
        },
        "rows": {
            "input": n + rejected,
            "valid": n,
            "rejected": rejected,
            "keep": int(keep.sum()),
            "discard": int(discard.sum()),
        },
        "features": names,
        "passthrough_columns": ["sample_id"],
        "constant_columns": names[d - constant :] if constant else [],
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "eigenvalues": eig.tolist(),
        "explained_variance_ratio": (eig / eig.sum()).tolist(),
        "projectors": projectors.tolist(),
        "warnings": warnings,
        "model": {"source": "fitted"},
        "svd": {
            "k": k,
            "singular_values": singular[:k].tolist(),
            "explained_variance_ratio": (singular[:k] ** 2 / (singular**2).sum()).tolist(),
            "effective_rank": float(
                np.exp(-(p := singular**2 / (singular**2).sum())[p > 0] @ np.log(p[p > 0]))
            ),
            "reconstruction_error": float(np.sqrt((singular[k:] ** 2).sum() / (singular**2).sum())),
        },
        "study": {
            "quadrants": {
                f"Q{q}": {
                    "rows": int((quadrants == q).sum()),
                    "mean": x[quadrants == q].mean(axis=0).tolist(),
                    "std": x[quadrants == q].std(axis=0).tolist(),
                    "min": x[quadrants == q].min(axis=0).tolist(),
                    "max": x[quadrants == q].max(axis=0).tolist(),
                }
                for q in range(1, 5)
            },
            "keep_vs_discard": {
                "mean_keep": x[keep].mean(axis=0).tolist(),
                "mean_discard": x[discard].mean(axis=0).tolist(),
                "effect_size": effect_list,
            },
            "loadings": loadings.tolist(),
            "anisotropy": {**_anisotropy(eig), "per_quadrant": per_quadrant},
        },
    }
    picked = np.arange(n) if n <= sample else np.linspace(0, n - 1, sample).astype(np.int64)
    svd_scores = (u[:, :2] * singular[:2])[picked] if with_svd else None
    return FullRun(er, study, scores[picked], quadrants[picked], svd_scores, correlation)
