"""The original notes' functions (seeds, "Local Testing"), on top of the Q4 operator.

::

    projectors, scaler = learn_projectors_linear(data)
    q1, q2, q3, q4 = four_quadrants(data, projectors)
    energy = energy_split(q1, q2, q3, q4)     # the er.json document

``projectors`` carries the standardization it was learnt with, so ``four_quadrants``
standardizes ``data`` exactly as the pipeline does; ``energy_split`` returns the same
dict as ``er.json`` for the same rows. Rows with a non-finite value are left out (the
pipeline's rejected rows): they belong to no quadrant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from q4.checks import as_matrix, check_fit_rows
from q4.energy import EnergyTally
from q4.model import fit_model
from q4.moments import Moments
from q4.projectors import Standardization
from q4.quadrants import quadrant_labels, scores

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.preprocessing import StandardScaler

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Projectors:
    """``p1``, ``p2`` (rows of ``components``, shape ``(2, d)``) and the standardization they belong to.

    ``np.asarray(projectors)`` gives the ``(2, d)`` matrix.
    """

    components: Array
    std: Standardization
    eigenvalues: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.components.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Array:
        return np.asarray(self.components, dtype=dtype)


@dataclass(frozen=True)
class Quadrant:
    """The rows of one quadrant: ``rows`` (original values), ``z`` (standardized), ``scores`` (s1, s2)."""

    label: int
    index: NDArray[np.int64]
    rows: Array
    z: Array
    scores: Array

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.rows.shape)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Array:
        return np.asarray(self.rows, dtype=dtype)


def _finite_rows(x: Array) -> NDArray[np.bool_]:
    return np.asarray(np.isfinite(x).all(axis=1))


def learn_projectors_linear(data: ArrayLike) -> tuple[Projectors, StandardScaler]:
    """Fit standardization and the two leading PCA projectors on ``data`` (n × d, numeric).

    Returns the projectors and a fitted scikit-learn ``StandardScaler`` holding the same
    mean and scale (constant columns: scale 1).
    """
    from sklearn.preprocessing import StandardScaler

    x = as_matrix(data)
    valid = x[_finite_rows(x)]
    moments = Moments(x.shape[1])
    moments.update(valid)
    check_fit_rows(moments)
    model = fit_model(moments, [f"x{j}" for j in range(x.shape[1])])
    scaler = StandardScaler()
    scaler.mean_ = model.mean.copy()
    scaler.scale_ = model.scale.copy()
    scaler.var_ = moments.variance
    scaler.n_samples_seen_ = moments.n
    scaler.n_features_in_ = x.shape[1]
    names = getattr(data, "columns", None)
    if names is not None:
        scaler.feature_names_in_ = np.asarray([str(c) for c in names], dtype=object)
    return Projectors(model.projectors.copy(), model.std, model.eigenvalues), scaler


def four_quadrants(data: ArrayLike, projectors: Projectors | ArrayLike) -> tuple[Quadrant, ...]:
    """Split the rows of ``data`` into Q1, Q2, Q3, Q4 by the signs of their scores.

    With :class:`Projectors` (from :func:`learn_projectors_linear`) the data is standardized
    with the learnt mean and scale; with a plain ``(2, d)`` matrix, with ``data``'s own.
    """
    x = as_matrix(data)
    finite = _finite_rows(x)
    if isinstance(projectors, Projectors):
        std, p = projectors.std, projectors.components
    else:
        p = np.asarray(projectors, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] != x.shape[1]:
            raise ValueError(f"projectors must have shape (2, {x.shape[1]}), not {p.shape}.")
        moments = Moments(x.shape[1])
        moments.update(x[finite])
        check_fit_rows(moments)
        from q4.projectors import standardization

        std = standardization(moments)
    if p.shape[1] != x.shape[1]:
        raise ValueError(f"data has {x.shape[1]} columns but the projectors were learnt on {p.shape[1]}.")
    index = np.flatnonzero(finite)
    rows = x[finite]
    z = std.apply(rows)
    s = scores(z, p)
    labels = quadrant_labels(s)
    return tuple(
        Quadrant(q, index[labels == q], rows[labels == q], z[labels == q], s[labels == q])
        for q in (1, 2, 3, 4)
    )


def energy_split(q1: Quadrant, q2: Quadrant, q3: Quadrant, q4: Quadrant) -> dict[str, Any]:
    """Energy per quadrant, keep (Q1+Q4) vs discard (Q2+Q3) and SNR: the ``er.json`` document."""
    tally = EnergyTally()
    for expected, quadrant in enumerate((q1, q2, q3, q4), start=1):
        if not isinstance(quadrant, Quadrant):
            raise TypeError("energy_split takes the four quadrants returned by four_quadrants().")
        if quadrant.label != expected:
            raise ValueError(
                f"energy_split expects Q1, Q2, Q3, Q4 in order; got Q{quadrant.label} in place {expected}."
            )
        labels = np.full(len(quadrant), expected, dtype=np.int8)
        tally.update(quadrant.z, quadrant.scores, labels)
    return tally.to_dict()
