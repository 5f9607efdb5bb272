"""Energy and projected energy per quadrant (docs/contract.md, The Q4 operator) and the ``er.json`` document.

A row's energy is ``‖z_i‖²``; its projected energy ``s1² + s2²``. Fractions are over the
total energy of the valid rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from q4.quadrants import DISCARD, KEEP, QUADRANTS

ER_SCHEMA = "q4.er/v1"


@dataclass
class EnergyTally:
    """Row counts, energy and projected energy per quadrant, accumulated chunk by chunk."""

    rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(4, dtype=np.int64))
    energy: NDArray[np.float64] = field(default_factory=lambda: np.zeros(4))
    projected: NDArray[np.float64] = field(default_factory=lambda: np.zeros(4))

    def update(self, z: NDArray[np.float64], s: NDArray[np.float64], labels: NDArray[np.int8]) -> None:
        """Add standardized rows ``z``, their scores ``s`` and quadrant ``labels``."""
        row_energy = np.einsum("ij,ij->i", z, z)
        row_projected = np.einsum("ij,ij->i", s, s)
        index = labels.astype(np.intp) - 1
        self.rows += np.bincount(index, minlength=4)
        self.energy += np.bincount(index, weights=row_energy, minlength=4)
        self.projected += np.bincount(index, weights=row_projected, minlength=4)

    def merge(self, other: EnergyTally) -> None:
        """Add another tally (a chunk's, computed on a worker thread): in chunk order, the sums are the
        same bits as updating one tally chunk by chunk."""
        self.rows += other.rows
        self.energy += other.energy
        self.projected += other.projected

    def to_dict(self) -> dict[str, Any]:
        """The ``er.json`` document."""
        total = float(self.energy.sum())

        def fraction(e: float) -> float | None:
            return e / total if total > 0 else None

        quadrants: dict[str, dict[str, Any]] = {
            name: {
                "rows": int(self.rows[i]),
                "energy": float(self.energy[i]),
                "fraction": fraction(float(self.energy[i])),
                "projected_energy": float(self.projected[i]),
            }
            for i, name in enumerate(QUADRANTS)
        }

        def group(names: tuple[str, ...]) -> dict[str, Any]:
            index = [QUADRANTS.index(q) for q in names]
            energy = float(sum(float(self.energy[i]) for i in index))
            return {
                "quadrants": list(names),
                "rows": int(sum(int(self.rows[i]) for i in index)),
                "energy": energy,
                "fraction": fraction(energy),
            }

        keep, discard = group(KEEP), group(DISCARD)
        snr = keep["energy"] / discard["energy"] if discard["energy"] > 0 else None
        snr_db = 10.0 * math.log10(snr) if snr is not None and snr > 0 else None
        return {
            "schema": ER_SCHEMA,
            "total_energy": total,
            "quadrants": quadrants,
            "keep": keep,
            "discard": discard,
            "snr": snr,
            "snr_db": snr_db,
        }
