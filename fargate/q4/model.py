"""The fitted Q4 model and its JSON form, ``q4_model.json`` (``q4.model/v1``; never pickle)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from q4.errors import ModelError
from q4.moments import Moments
from q4.projectors import Standardization, correlation, principal_axes, standardization

Array = NDArray[np.float64]

MODEL_SCHEMA = "q4.model/v1"


@dataclass(frozen=True)
class Q4Model:
    """Everything needed to apply Q4 to new rows: standardization and projectors.

    ``components`` holds the leading eigenvectors of ``C`` (rows, sign-fixed, at least 2);
    ``projectors`` are its first two rows. ``eigenvalues`` has all ``d`` eigenvalues.
    """

    features: tuple[str, ...]
    std: Standardization
    eigenvalues: Array
    components: Array
    n_samples_fit: int
    source_run: str | None = None

    @property
    def mean(self) -> Array:
        return self.std.mean

    @property
    def scale(self) -> Array:
        return self.std.scale

    @property
    def constant(self) -> NDArray[np.bool_]:
        return self.std.constant

    @property
    def projectors(self) -> Array:
        """``(2, d)``: ``p1`` and ``p2`` as rows."""
        return self.components[:2]

    @property
    def singular_values(self) -> Array:
        """Singular values of ``Z`` (``sqrt(n · λ)``) for the stored components."""
        k = self.components.shape[0]
        return np.sqrt(self.n_samples_fit * self.eigenvalues[:k])

    def to_dict(self, *, version: str) -> dict[str, Any]:
        return {
            "schema": MODEL_SCHEMA,
            "features": list(self.features),
            "mean": _floats(self.mean),
            "scale": _floats(self.scale),
            "constant": [bool(c) for c in self.constant],
            "center": {"shift": _floats(self.std.shift), "offset": _floats(self.std.offset)},
            "projectors": [_floats(p) for p in self.projectors],
            "eigenvalues": _floats(self.eigenvalues),
            "svd": {
                "components": [_floats(c) for c in self.components],
                "singular_values": _floats(self.singular_values),
            },
            "n_samples_fit": int(self.n_samples_fit),
            "source_run": self.source_run,
            "q4_version": version,
        }

    def save(self, path: Path, *, version: str) -> None:
        path.write_text(json.dumps(self.to_dict(version=version), indent=2) + "\n", encoding="utf-8")


def fit_model(
    moments: Moments, features: Sequence[str], *, n_components: int = 2, source_run: str | None = None
) -> Q4Model:
    """Fit standardization and projectors from the moments of the valid rows."""
    std = standardization(moments)
    eigenvalues, vectors = principal_axes(correlation(moments, std))
    keep = max(2, min(n_components, len(features)))
    return Q4Model(tuple(features), std, eigenvalues, vectors[:keep], moments.n, source_run)


def model_from_dict(doc: Any, *, source: str) -> Q4Model:
    """Rebuild a model from parsed ``q4_model.json``; a clear :class:`ModelError` if it is not one."""
    try:
        if not isinstance(doc, dict) or doc.get("schema") != MODEL_SCHEMA:
            raise ValueError("schema")
        features = tuple(str(f) for f in doc["features"])
        d = len(features)
        mean = _array(doc["mean"], d)
        scale = _array(doc["scale"], d)
        constant = np.array([bool(c) for c in doc["constant"]], dtype=bool)
        center = doc.get("center")
        if center:
            shift, offset = _array(center["shift"], d), _array(center["offset"], d)
        else:
            shift, offset = mean, np.zeros(d)
        svd = doc.get("svd") or {}
        components = np.array(svd.get("components") or doc["projectors"], dtype=np.float64)
        eigenvalues = np.array(doc["eigenvalues"], dtype=np.float64)
        if (
            constant.shape != (d,)
            or components.ndim != 2
            or components.shape[0] < 2
            or components.shape[1] != d
            or eigenvalues.shape != (d,)
            or not np.all(scale > 0)
            or not np.all(np.isfinite(components))  # NaN scores would reach er.json
            or not np.all(np.isfinite(eigenvalues))
        ):
            raise ValueError("shape")
        std = Standardization(shift, offset, scale, constant)
        return Q4Model(
            features, std, eigenvalues, components, int(doc["n_samples_fit"]), doc.get("source_run")
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelError(
            "invalid_model",
            f"The model {source} is not a valid q4_model.json ({MODEL_SCHEMA}); "
            "pass a model written by an enhanced or full q4 run.",
            {"model": source, "problem": str(exc)},
        ) from None


def load_model(path: Path) -> Q4Model:
    """Read a ``q4_model.json`` file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            "model_not_found", f"The model file {path} does not exist; check the --model path.", {}
        ) from None
    # ValueError: also JSON integers over 4,300 digits; RecursionError: nesting deeper than the stack
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(
            "invalid_model",
            f"The model file {path} is not readable JSON; pass a q4_model.json written by q4.",
            {"model": str(path), "problem": str(exc)},
        ) from None
    return model_from_dict(doc, source=str(path))


def _array(values: Any, d: int) -> Array:
    arr = np.array(values, dtype=np.float64)
    if arr.shape != (d,) or not np.all(np.isfinite(arr)):
        raise ValueError("vector")
    return arr


def _floats(values: Array) -> list[float | None]:
    return [json_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def json_number(value: float) -> float | None:
    """A float for JSON: ``None`` (null) for NaN and infinities."""
    return value if math.isfinite(value) else None
