"""``Q4Estimator``: the Q4 operator as a scikit-learn estimator.

``fit`` learns standardization and projectors (the same math as the pipeline),
``predict`` gives quadrant labels 1..4, ``transform`` the scores ``(s1, s2)``;
``save`` / ``load`` write and read ``q4_model.json`` (JSON, never pickle), the same file
``q4 run --model`` applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from q4.checks import check_fit_rows
from q4.model import Q4Model, fit_model, load_model
from q4.moments import Moments
from q4.quadrants import quadrant_labels, scores


class Q4Estimator(TransformerMixin, BaseEstimator):
    """Four-quadrant split by the signs of the two leading principal-component scores.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        Mean of each feature over the training rows.
    scale_ : ndarray of shape (n_features,)
        Population standard deviation (ddof = 0); 1 for constant features.
    components_ : ndarray of shape (2, n_features)
        The projectors ``p1``, ``p2`` (largest-|.| entry positive, like ``PCA.components_``).
    eigenvalues_ : ndarray of shape (n_features,)
        Eigenvalues of ``C = ZᵀZ/n``, descending.
    explained_variance_ratio_ : ndarray of shape (n_features,)
        ``eigenvalues_ / eigenvalues_.sum()``.
    labels_ : ndarray of shape (n_samples,)
        Quadrant (1..4) of every training row.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on a DataFrame with string column names.
    """

    def fit(self, X: ArrayLike, y: Any = None) -> Q4Estimator:
        """Learn mean, scale and projectors from ``X`` (n_samples ≥ 2, n_features ≥ 2)."""
        x = validate_data(self, X, dtype=np.float64, ensure_min_samples=2, ensure_min_features=2)
        moments = Moments(x.shape[1])
        moments.update(x)
        check_fit_rows(moments)
        names = getattr(self, "feature_names_in_", None)
        features = [str(n) for n in names] if names is not None else [f"x{j}" for j in range(x.shape[1])]
        self._set_model(fit_model(moments, features))
        self.labels_ = self.predict(x)
        return self

    def _set_model(self, model: Q4Model) -> None:
        self.model_ = model
        self.mean_ = model.mean.copy()
        self.scale_ = model.scale.copy()
        self.components_ = model.projectors.copy()
        self.eigenvalues_ = model.eigenvalues.copy()
        total = float(model.eigenvalues.sum())
        self.explained_variance_ratio_ = model.eigenvalues / total if total > 0 else model.eigenvalues * 0
        self.n_features_in_ = len(model.features)

    def transform(self, X: ArrayLike) -> NDArray[np.float64]:
        """Scores ``(s1, s2)`` of every row, shape ``(n_samples, 2)``."""
        check_is_fitted(self, "model_")
        x = validate_data(self, X, dtype=np.float64, reset=False)
        return scores(self.model_.std.apply(x), self.model_.projectors)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """Quadrant label 1..4 of every row (1, 4 = keep / signal; 2, 3 = discard / noise)."""
        return quadrant_labels(self.transform(X)).astype(np.int64)

    def fit_predict(self, X: ArrayLike, y: Any = None) -> NDArray[np.int64]:
        return self.fit(X).labels_

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as ``q4_model.json`` (the file ``q4 run --model`` applies)."""
        from q4 import __version__

        check_is_fitted(self, "model_")
        path = Path(path)
        self.model_.save(path, version=__version__)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Q4Estimator:
        """A fitted estimator from a ``q4_model.json`` (written by :meth:`save` or an enhanced/full run)."""
        model = load_model(Path(path))
        estimator = cls()
        estimator._set_model(model)
        if any(f != f"x{j}" for j, f in enumerate(model.features)):
            estimator.feature_names_in_ = np.asarray(model.features, dtype=object)
        return estimator
