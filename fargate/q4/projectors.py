"""Standardization and PCA projectors (docs/contract.md, The Q4 operator, 3-4), from streamed moments.

``C = Zᵀ Z / n`` follows from the co-moment matrix without a second pass:
``C_ij = M2_ij / (n · scale_i · scale_j)``, with the rows and columns of constant features
set to exactly 0. Its eigenvectors, sorted by eigenvalue (descending) and sign-fixed like
scikit-learn's ``PCA.components_`` (largest-|.| entry positive, first on ties), are the
projectors; the first two are ``p1`` and ``p2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from q4.moments import Moments

Array = NDArray[np.float64]

#: Relative tolerance under which two eigenvalues count as equal (or one as zero).
DEGENERACY_RTOL = 1e-12


@dataclass(frozen=True)
class Standardization:
    """``z = ((x - shift) - offset) / scale``; constant features give exactly 0."""

    shift: Array
    offset: Array
    scale: Array
    constant: NDArray[np.bool_]

    @property
    def mean(self) -> Array:
        return self.shift + self.offset

    def apply(self, x: Array) -> Array:
        """Standardize rows ``x`` of shape ``(m, d)``."""
        z = np.subtract(x, self.shift)  # one new array, then in place
        z -= self.offset
        z /= self.scale
        if self.constant.any():
            z[:, self.constant] = 0.0
        return z


def standardization(moments: Moments) -> Standardization:
    """Population (ddof = 0) standardization of the rows the moments have seen."""
    constant = moments.constant
    scale = np.sqrt(moments.variance)
    scale = np.where(constant | (scale == 0.0), 1.0, scale)
    return Standardization(moments.shift.copy(), moments.offset.copy(), scale, constant)


def correlation(moments: Moments, std: Standardization) -> Array:
    """``C = Zᵀ Z / n`` of the standardized rows (constant features' rows/columns are 0)."""
    c = moments.comoment / moments.n / np.outer(std.scale, std.scale)
    c[std.constant, :] = 0.0
    c[:, std.constant] = 0.0
    return 0.5 * (c + c.T)


def flip_signs(components: Array) -> Array:
    """Flip each row so that its entry of largest absolute value is positive (first on ties)."""
    components = np.array(components, dtype=np.float64, copy=True)
    if components.size == 0:
        return components
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def principal_axes(c: Array) -> tuple[Array, Array]:
    """Eigenvalues (descending, clipped at 0) and sign-fixed eigenvectors (rows) of ``c``."""
    eigenvalues, vectors = np.linalg.eigh(c)
    order = np.argsort(eigenvalues, kind="stable")[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    return eigenvalues, flip_signs(vectors[:, order].T)


def is_degenerate(eigenvalues: Array) -> bool:
    """True when λ1 and λ2 are equal, or λ2 is zero, to :data:`DEGENERACY_RTOL` relative.

    ``λ2 == λ3`` also counts: then ``p2`` (and the quadrants) depend on the eigen solver.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size < 2 or lam[0] <= 0.0:
        return True
    tol = DEGENERACY_RTOL * lam[0]
    if lam[1] <= tol or lam[0] - lam[1] <= tol:
        return True
    return bool(lam.size > 2 and lam[1] - lam[2] <= tol)
