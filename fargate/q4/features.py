"""Feature selection and valid / rejected rows (docs/contract.md, The Q4 operator, 1-2).

A row is valid when every feature value is a finite number. A rejected row carries the
reason of its first bad feature (in feature order): ``missing:<col>`` (empty or an NA
token), ``not_numeric:<col>`` (text that is not a number) or ``not_finite:<col>``
(NaN or ±inf).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from q4.errors import InputError, name_list

#: Text cells read as a missing value (besides empty / whitespace-only cells).
NA_TOKENS = ("NA", "N/A", "n/a", "na", "NULL", "null", "None", "none", "#N/A", "-")
_NUMBER = r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|(?i:nan|inf|infinity))$"

OK, MISSING, NOT_NUMERIC, NOT_FINITE = 0, 1, 2, 3
_REASONS = {MISSING: "missing", NOT_NUMERIC: "not_numeric", NOT_FINITE: "not_finite"}


def select_features(
    columns: Sequence[str], numeric: Sequence[str], features: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(features, passthrough)``: the numeric columns by default, else the named ones (checked)."""
    if features is None:
        chosen = [c for c in columns if c in set(numeric)]
    else:
        chosen = list(dict.fromkeys(features))
        missing = [f for f in chosen if f not in columns]
        if missing:
            raise InputError(
                "unknown_features",
                f"The feature column(s) {name_list(missing)} are not in the input; "
                f"choose from {name_list(columns, 20)}.",
                {"missing": missing, "columns": list(columns)},
            )
        not_numeric = [f for f in chosen if f not in set(numeric)]
        if not_numeric:
            raise InputError(
                "non_numeric_features",
                f"The feature column(s) {name_list(not_numeric)} are not numeric; "
                "name only integer or floating-point columns as features.",
                {"not_numeric": not_numeric},
            )
    if len(chosen) < 2:
        if features is not None:
            raise InputError(
                "too_few_features",
                f"Only {len(chosen)} feature column was named; Q4 needs at least 2 numeric feature columns.",
                {"features": chosen},
            )
        found = "no numeric column" if not chosen else f"only one numeric column ({chosen[0]!r})"
        raise InputError(
            "too_few_features",
            f"The input has {found}; Q4 needs at least 2 numeric feature columns.",
            {"features": chosen, "columns": list(columns)},
        )
    chosen_set = set(chosen)
    return chosen, [c for c in columns if c not in chosen_set]


@dataclass(frozen=True)
class FeatureBlock:
    """The features of one chunk.

    ``values``: ``(m, d)`` float64 (column-major; NaN where a cell is not a number);
    ``valid``: ``(m,)``; ``reasons``: the rejection reason of every invalid row, in row order.
    """

    values: NDArray[np.float64]
    valid: NDArray[np.bool_]
    reasons: list[str]

    @property
    def all_valid(self) -> bool:
        return not self.reasons


def feature_block(batch: pa.RecordBatch, features: Sequence[str]) -> FeatureBlock:
    """Convert the feature columns of a chunk to float64, classifying every cell."""
    m = batch.num_rows
    values = np.empty((m, len(features)), dtype=np.float64, order="F")
    status = np.zeros((m, len(features)), dtype=np.int8, order="F")
    for j, name in enumerate(features):
        values[:, j], status[:, j] = _column(batch.column(name))
    bad_cells = status != OK
    valid = np.asarray(~bad_cells.any(axis=1))
    if valid.all():
        return FeatureBlock(values, valid, [])
    bad = status[~valid]
    first = np.argmax(bad != OK, axis=1)
    codes = bad[np.arange(bad.shape[0]), first]
    reasons = [f"{_REASONS[int(c)]}:{features[int(j)]}" for c, j in zip(codes, first, strict=True)]
    return FeatureBlock(values, valid, reasons)


def looks_numeric(col: pa.Array) -> bool:
    """A text column is numeric when at least half of its non-missing cells are numbers (and one is).

    So a column of numbers with the odd bad cell ("ERR", "n/a") is still a feature, whose bad
    cells reject their rows, while a text column is passthrough.
    """
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return bool(pa.types.is_integer(col.type) or pa.types.is_floating(col.type))
    _, status = _column(col)
    numbers = int(np.count_nonzero((status == OK) | (status == NOT_FINITE)))
    text = int(np.count_nonzero(status == NOT_NUMERIC))
    return numbers > 0 and numbers >= text


def _column(col: pa.Array) -> tuple[NDArray[np.float64], NDArray[np.int8]]:
    status = np.zeros(len(col), dtype=np.int8)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            numbers = pc.cast(col, pa.float64())
        except pa.ArrowInvalid:
            numbers, status = _parse_text(col)
    else:
        numbers = pc.cast(col, pa.float64(), safe=False)
    if numbers.null_count:
        status[numbers.is_null().to_numpy(zero_copy_only=False) & (status == OK)] = MISSING
        numbers = numbers.fill_null(np.nan)
    values = numbers.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    status[~np.isfinite(values) & (status == OK)] = NOT_FINITE
    return values, status


def _parse_text(col: pa.Array) -> tuple[pa.Array, NDArray[np.int8]]:
    """Slow path for a text column with at least one cell that is not a number."""
    text = pc.utf8_trim_whitespace(col)
    missing = pc.or_(pc.equal(text, ""), pc.is_in(text, value_set=pa.array(NA_TOKENS)))
    number_like = pc.and_not(pc.match_substring_regex(text, _NUMBER), missing)
    numbers = pc.cast(pc.if_else(number_like, text, pa.scalar(None, pa.string())), pa.float64())
    is_missing = missing.fill_null(True).to_numpy(zero_copy_only=False)
    is_number = number_like.fill_null(False).to_numpy(zero_copy_only=False)
    status = np.where(is_missing, MISSING, np.where(is_number, OK, NOT_NUMERIC)).astype(np.int8)
    return numbers, status


# ---- warnings about the default choices (pure: names and values in, warning dicts out)

_NUMBER_RE = re.compile(_NUMBER)
#: Column names that say "row identifier" (compared lower-cased, blanks stripped); so does ``*_id``.
ID_NAMES = frozenset({"", "id", "index", "idx", "row", "row_id", "rownum", "unnamed: 0"})
#: The value check needs at least this many rows in the first chunk.
ID_MIN_ROWS = 3


def is_number_text(text: str) -> bool:
    """The reader's rule for a cell that is a number (blanks around it allowed)."""
    return _NUMBER_RE.match(text.strip()) is not None


def _is_sequence(values: Sequence[float]) -> bool:
    """At least 3 finite values, strictly monotonic with a constant step (a wavelength axis)."""
    if len(values) < 3 or not all(np.isfinite(values)):
        return False
    steps = np.diff(np.asarray(values, dtype=np.float64))
    step = float(steps[0])
    return step != 0 and bool(np.all(np.abs(steps - step) <= 1e-6 * abs(step)))


def numeric_header_warning(columns: Sequence[str], file_name: str) -> dict[str, str] | None:
    """A warning when every column name of a CSV is a number (a file without a header row, likely).

    Only with at least 2 columns, and not when the names are an evenly spaced monotonic sequence of
    at least 3 numbers (``400, 410, 420``, ``1000, 999.5, 999``): spectra name their columns so, a
    row of measurements almost never is one.
    """
    if len(columns) < 2 or not all(is_number_text(c) for c in columns):
        return None
    if _is_sequence([float(c) for c in columns]):
        return None
    example = columns[0].strip()
    example = example if len(example) <= 24 else example[:21] + "..."
    return {
        "code": "numeric_header",
        "message": f"Every column name of {file_name} is a number (e.g. {example!r}): if the file has no "
        "header row, its first data row was used as the header (and is not in the results); "
        "add a header line.",
    }


def is_id_name(name: str) -> bool:
    """``id``, ``index``, ``idx``, ``row``, ``row_id``, ``rownum``, ``Unnamed: 0``, empty, ``*_id``."""
    key = name.strip().lower()
    return key in ID_NAMES or key.endswith("_id")


def counts_up(values: NDArray[np.float64]) -> bool:
    """``values`` are consecutive integers ``v0, v0+1, v0+2, ...`` (at least ``ID_MIN_ROWS`` of them)."""
    m = values.shape[0]
    if m < ID_MIN_ROWS or not np.isfinite(values[0]) or values[0] != np.floor(values[0]):
        return False
    return bool(np.array_equal(values, values[0] + np.arange(m, dtype=np.float64)))


def row_id_warnings(features: Sequence[str], first: NDArray[np.float64] | None) -> list[dict[str, str]]:
    """Warnings for default-chosen features that look like row identifiers.

    A feature does when its name is id-like (:func:`is_id_name`) or its values in ``first`` (the
    ``(m, d)`` feature values of the first chunk, or None) count up by 1 row after row.
    """
    starts: list[float | None] = [None] * len(features)
    if first is not None:
        starts = [float(first[0, j]) if counts_up(first[:, j]) else None for j in range(len(features))]
    return row_id_warnings_from(features, starts)


def row_id_warnings_from(features: Sequence[str], starts: Sequence[float | None]) -> list[dict[str, str]]:
    """:func:`row_id_warnings` from what the first chunk showed: per feature, the value its values count up
    from (None: they do not)."""
    out: list[dict[str, str]] = []
    for name, start in zip(features, starts, strict=True):
        reasons = []
        if is_id_name(name):
            reasons.append("its name" if name.strip() else "it has no name")
        if start is not None:
            reasons.append(f"its values count up by 1 from {start:.0f}, row after row")
        if reasons:
            out.append(
                {
                    "code": "row_id_feature",
                    "message": f"Feature {name!r} looks like a row identifier ({' and '.join(reasons)}); "
                    "if it is not a measurement, leave it out with --features (or the work message's "
                    '"features").',
                }
            )
    return out
