"""Checks shared by the library functions and the estimator: errors that are also ``ValueError``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from q4.errors import InputError, name_list
from q4.moments import Moments


class DataError(InputError, ValueError):
    """The data cannot be used for Q4 (also a ``ValueError``, as scikit-learn expects)."""


def as_matrix(data: ArrayLike) -> NDArray[np.float64]:
    """``data`` as a 2-D float64 array; a clear error otherwise."""
    try:
        x = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            "not_numeric", "The data is not numeric; pass a 2-D array (or DataFrame) of numbers."
        ) from None
    if x.ndim != 2:
        raise DataError(
            "not_2d", f"Expected a 2-D array of shape (n_samples, n_features), got {x.ndim} dimension(s)."
        )
    return x


def check_fit_rows(moments: Moments) -> None:
    """At least 2 valid rows and 2 non-constant features (docs/contract.md, The Q4 operator)."""
    if moments.n < 2:
        raise DataError(
            "too_few_rows", f"Found {moments.n} valid sample(s); Q4 needs at least 2 rows of finite values."
        )
    check_finite(moments, [f"x{j}" for j in range(moments.d)])
    if int((~moments.constant).sum()) < 2:
        raise DataError(
            "too_few_features",
            f"Only {int((~moments.constant).sum())} of the {moments.d} features vary; "
            "Q4 needs at least 2 non-constant features.",
        )


def check_finite(moments: Moments, features: Sequence[str]) -> None:
    """Refuse features whose values are too large for float64 sums of squares."""
    bad = [f for f, ok in zip(features, moments.finite, strict=True) if not ok]
    if bad:
        raise DataError(
            "values_too_large",
            f"The values of {name_list(bad)} are too large to square in float64 (beyond ~1e154); "
            "rescale those columns.",
            {"features": bad},
        )
