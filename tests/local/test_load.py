"""Load (issue #5, item 1), small: 20 runs at once through the work queue of the shared local stack.

`benchmarks/load.py` is the full version (200 runs, figures in benchmarks/results/load.json); this runs
the same plan, drain and audit with 20 runs (mixed sizes up to 10k rows, all three modes, bad inputs that
must end `failed`, bad messages that must end `rejected`) and checks the invariants on the raw observations.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support.local_stack import load_bench

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_twenty_runs_at_once_each_end_exactly_once(stack):
    bench = load_bench()
    result = bench.run_load(
        stack["aws"],
        stack["state_dir"],
        20,
        seed=11,
        prefix="loadtest",
        timeout=240,
        settle=5,
        exclusive=False,
    )
    plans = {plan["run_id"]: plan for plan in result.planned}
    expected = Counter(plan["expect"] for plan in plans.values())
    assert expected["failed"] >= 1 and expected["rejected"] >= 1 and expected["succeeded"] >= 15
    assert {plan["mode"] for plan in plans.values() if plan["expect"] == "succeeded"} == {
        "standard",
        "enhanced",
        "full",
    }
    for run_id, plan in plans.items():
        # exactly one terminal done message, with the expected status (no crash was injected: no copies)
        assert [message["status"] for message in result.done[run_id]] == [plan["expect"]], run_id
        # exactly one of MANIFEST.json / ERROR.json per accepted run; nothing for a rejected message
        want = {"succeeded": ["MANIFEST.json"], "failed": ["ERROR.json"], "rejected": []}[plan["expect"]]
        assert result.terminal[run_id] == want, run_id
        assert result.tasks_per_run[run_id] == (0 if plan["expect"] == "rejected" else 1), run_id
    # manifests' checksums, job.json, empty work queue and DLQ: audited by the benchmark's own checks
    assert result.problems == []
    summary = result.summary()
    assert summary["ended"] == 20 and summary["latency_s"]["p95"] > 0
    print(f"\nload (20 runs): {summary['throughput_runs_per_min']} runs/min, latency {summary['latency_s']}")


def test_sharded_runs_at_once_each_end_exactly_once(stack):
    """Issue #12: sharded runs under load (every valid message asks for 3 shards): 0 lost, 0 duplicated,
    each run's tasks exactly its plan's steps (`benchmarks/load.py --shards 3` is the 50-run version)."""
    bench = load_bench()
    result = bench.run_load(
        stack["aws"],
        stack["state_dir"],
        10,
        seed=13,
        prefix="loadshard",
        timeout=300,
        settle=5,
        exclusive=False,
        shards=3,
    )
    plans = {plan["run_id"]: plan for plan in result.planned}
    for run_id, plan in plans.items():
        assert [message["status"] for message in result.done[run_id]] == [plan["expect"]], run_id
    assert result.problems == []  # includes: tasks per run as the plan's steps (2 x 3 + 1 when sharded)
    assert 7 in result.tasks_per_run.values()  # runs were really sharded
