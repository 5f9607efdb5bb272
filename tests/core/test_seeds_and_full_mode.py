"""The seeds' "Local Testing" snippet runs as is, and full mode writes the study, plots and report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from q4 import JobSpec, energy_split, four_quadrants, learn_projectors_linear, run_job
from support.tables import read_json, write_csv

# The snippet from the original notes (seeds, "Local Testing"), verbatim except the import line:
# `from lambda_function import ...` became `from q4 import ...`.
SEEDS_SNIPPET = """
import pandas as pd
import numpy as np
from q4 import learn_projectors_linear, four_quadrants, energy_split

# Create test data
data = np.random.randn(100, 4)
projectors, scaler = learn_projectors_linear(data)
q1, q2, q3, q4 = four_quadrants(data, projectors)
energy = energy_split(q1, q2, q3, q4)
print('Energy split:', energy)
"""


def test_seeds_local_testing_snippet_runs_unchanged():
    done = subprocess.run([sys.executable, "-c", SEEDS_SNIPPET], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Energy split: {'schema': 'q4.er/v1'")
    assert "'snr'" in done.stdout


def test_seeds_functions_partition_rows_and_match_the_scaler():
    rng = np.random.default_rng(11)
    data = rng.standard_normal((200, 4)) * [1.0, 2.0, 3.0, 4.0] + 10.0
    projectors, scaler = learn_projectors_linear(data)
    np.testing.assert_allclose(scaler.transform(data).mean(axis=0), 0.0, atol=1e-12)
    assert np.asarray(projectors).shape == (2, 4)
    quadrants = four_quadrants(data, projectors)
    assert sum(len(q) for q in quadrants) == 200
    np.testing.assert_array_equal(np.sort(np.concatenate([q.index for q in quadrants])), np.arange(200))
    er = energy_split(*quadrants)
    assert er["quadrants"]["Q1"]["rows"] == len(quadrants[0])
    np.testing.assert_allclose(er["total_energy"], 800.0, rtol=1e-12)  # n * d for standardized data


def test_full_mode_writes_study_plots_and_a_report(tmp_path):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((400, 4)) @ np.array(
        [[3.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.2], [0.0, 0.0, 0.0, 0.5]]
    )
    rows = [[f"id{i}", *r, "a" if i % 2 else "b"] for i, r in enumerate(x.tolist())]
    src = write_csv(tmp_path / "sample.csv", ["id", "w", "x", "y", "z", "group"], rows)
    run_dir = tmp_path / "out" / "run=full"
    result = run_job([src], run_dir, JobSpec(run_id="full", mode="full"))
    keys = {a.key for a in result.artifacts}
    assert {"output/svd_scores.csv", "model/q4_model.json", "viz/report.html"} <= keys
    assert any(k.startswith("viz/") and k.endswith(".png") for k in keys)
    assert result.report == run_dir / "viz" / "report.html"

    study = read_json(run_dir / "output/Q_study.json")
    json.dumps(study, allow_nan=False)
    section = study["study"]
    assert set(section) == {"quadrants", "keep_vs_discard", "loadings", "anisotropy"}
    assert sum(section["quadrants"][q]["rows"] for q in ("Q1", "Q2", "Q3", "Q4")) == 400
    q1 = section["quadrants"]["Q1"]
    in_q1 = np.array([r[1:5] for r, q in zip(rows, _quadrants(run_dir), strict=True) if q == 1], dtype=float)
    np.testing.assert_allclose(q1["mean"], in_q1.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(q1["std"], in_q1.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(q1["min"], in_q1.min(axis=0))
    lam = np.array(study["eigenvalues"])
    aniso = section["anisotropy"]
    np.testing.assert_allclose(aniso["lambda1_over_lambda2"], lam[0] / lam[1], rtol=1e-12)
    np.testing.assert_allclose(aniso["condition_number"], lam[0] / lam[-1], rtol=1e-12)
    assert 0 < aniso["fractional_anisotropy"] < 1 and 0 < aniso["sphericity"] < 1
    assert set(aniso["per_quadrant"]) == {"Q1", "Q2", "Q3", "Q4"}
    assert len(section["keep_vs_discard"]["effect_size"]) == 4
    np.testing.assert_allclose(np.linalg.norm(section["loadings"][0]) ** 2, lam[0], rtol=1e-9)

    report = (run_dir / "viz" / "report.html").read_text()
    assert "<html" in report.lower() and "full" in report


def _quadrants(run_dir):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parts = [pcsv.read_csv(run_dir / "output" / f"Q_{n}.csv") for n in ("keep", "discard")]
    both = pa.concat_tables([p.select(["q4_row", "q4_quadrant"]) for p in parts]).sort_by("q4_row")
    return both["q4_quadrant"].to_pylist()
