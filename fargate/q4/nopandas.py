"""Keep pandas out of a q4 command's process.

pyarrow imports pandas, when it is installed, the first time a process converts between numpy and Arrow
(``pa.array``, ``to_numpy``): about 0.2 s and 50 MB for nothing q4 uses. The task image has no pandas; a
scientist's environment, and a clone's (a development dependency), usually do. The console scripts (``q4``,
``q4-task``) therefore refuse the import in their own process, so pyarrow finds no pandas and every run
behaves as in the task image. Code that calls q4 as a library (``run_job`` in a notebook) is left alone: it
may well want pandas.
"""

from __future__ import annotations

import sys
from typing import Any


class _NoPandas:
    """A meta path finder that makes ``import pandas`` fail, as in the task image."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of q4's commands (q4.nopandas)", name=name)


def keep_pandas_out() -> None:
    """Refuse ``import pandas`` in this process from now on, unless it is imported already."""
    if "pandas" not in sys.modules and _NoPandas not in sys.meta_path:
        sys.meta_path.insert(0, _NoPandas)
