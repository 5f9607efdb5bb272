"""Helpers for the core tests: write small tables, read run outputs back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV by hand (floats as ``repr``, so they parse back exactly)."""

    def cell(v: Any) -> str:
        return repr(float(v)) if isinstance(v, float | np.floating) else str(v)

    lines = [",".join(header)] + [",".join(cell(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def matrix_csv(path: Path, x: np.ndarray, names: Sequence[str] | None = None) -> Path:
    names = list(names or [f"f{j}" for j in range(x.shape[1])])
    return write_csv(path, names, x.tolist())


def read_text_csv(path: Path) -> pa.Table:
    """Read an output CSV with every column as text (exactly what was written)."""
    with path.open("rb") as f:
        names = f.readline().decode().strip().split(",")
    types = {n: pa.string() for n in names}
    return pcsv.read_csv(
        path, convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    )


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def split_scores(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q4_row, scores (n, 2), quadrant)`` of all valid rows, in input-row order."""
    parts = [pcsv.read_csv(run_dir / "output" / f"Q_{name}.csv") for name in ("keep", "discard")]
    rows = np.concatenate([p["q4_row"].to_numpy() for p in parts])
    s = np.concatenate(
        [np.column_stack([p["q4_score1"].to_numpy(), p["q4_score2"].to_numpy()]) for p in parts]
    )
    q = np.concatenate([p["q4_quadrant"].to_numpy() for p in parts])
    order = np.argsort(rows)
    return rows[order], s[order], q[order]
