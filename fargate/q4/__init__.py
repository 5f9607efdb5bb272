"""Q4: split a table into signal and noise by the signs of its two leading PCA scores.

The public API (imported lazily, so ``import q4`` stays cheap for the CLI and the task)::

    from q4 import run_job, JobSpec, RunResult            # the whole job into a directory
    from q4 import Q4Estimator                            # scikit-learn compatible estimator
    from q4 import Q4Model, load_model                     # q4_model.json
    from q4 import learn_projectors_linear, four_quadrants, energy_split   # the original notes' API
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "JobSpec": "q4.job",
    "RunResult": "q4.job",
    "run_job": "q4.job",
    "Q4Estimator": "q4.estimator",
    "Q4Model": "q4.model",
    "load_model": "q4.model",
    "learn_projectors_linear": "q4.notes",
    "four_quadrants": "q4.notes",
    "energy_split": "q4.notes",
    "Projectors": "q4.notes",
    "Quadrant": "q4.notes",
}

__all__ = [
    "JobSpec",
    "Projectors",
    "Q4Estimator",
    "Q4Model",
    "Quadrant",
    "RunResult",
    "__version__",
    "energy_split",
    "four_quadrants",
    "learn_projectors_linear",
    "load_model",
    "run_job",
]

if TYPE_CHECKING:  # pragma: no cover
    from q4.estimator import Q4Estimator
    from q4.job import JobSpec, RunResult, run_job
    from q4.model import Q4Model, load_model
    from q4.notes import Projectors, Quadrant, energy_split, four_quadrants, learn_projectors_linear


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'q4' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
