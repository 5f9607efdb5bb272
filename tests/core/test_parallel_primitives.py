"""q4.parallel.ordered_map (order, errors, cancellation) and q4.cpus.available_cpus (Q4_CPUS, a fake
cgroup v1 / v2 tree, the ECS task metadata as a file:// endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from q4.cpus import available_cpus, cgroup_cpu_limit
from q4.errors import InputError
from q4.parallel import ordered_map

AFFINITY = len(os.sched_getaffinity(0))


def _slow_square(i: int) -> int:
    time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
    return i * i


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_results_come_in_input_order(workers: int) -> None:
    assert list(ordered_map(_slow_square, range(60), workers)) == [i * i for i in range(60)]


def test_at_most_window_items_are_taken_ahead() -> None:
    taken: list[int] = []

    def items():
        for i in range(100):
            taken.append(i)
            yield i

    results = ordered_map(lambda i: i, items(), 2, window=3)
    assert next(results) == 0
    assert len(taken) <= 4  # the window, plus the one handed out
    results.close()


def test_the_first_error_in_input_order_is_raised_and_the_rest_cancelled() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        if i in (5, 3):
            time.sleep(0.05 if i == 3 else 0.0)  # 5 fails first in time, 3 first in order
            raise ValueError(f"item {i}")
        return i

    seen: list[int] = []
    with pytest.raises(ValueError, match="item 3"):
        for r in ordered_map(work, range(1000), 2, window=4):
            seen.append(r)
    assert seen == [0, 1, 2]
    assert max(started) < 20  # nothing after the window was started


def test_an_error_of_the_source_reaches_the_consumer() -> None:
    def items():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(ordered_map(lambda i: i, items(), 2))


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(ordered_map(lambda i: i, [1], 0))


def test_q4_cpus_overrides(tmp_path: Path) -> None:
    assert available_cpus({"Q4_CPUS": "3"}, cgroup_root=tmp_path) == 3
    for value in ("0", "two", "٣", "-1", "1.5"):  # "٣": an Arabic-Indic 3, a digit to str.isdigit
        with pytest.raises(InputError, match="positive whole number") as refused:
            available_cpus({"Q4_CPUS": value}, cgroup_root=tmp_path)
        assert refused.value.code == "invalid_cpus"


def test_q4_run_with_an_invalid_q4_cpus_says_so_in_one_sentence(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("a,b\n1,2\n2,1\n3,5\n", encoding="utf-8")
    env = {**os.environ, "Q4_CPUS": "all"}
    q4 = str(Path(sys.executable).with_name("q4"))
    done = subprocess.run(
        [q4, "run", str(src), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "q4: error: Q4_CPUS must be a positive whole number of CPUs, not 'all'; unset it to use every CPU "
        "this process may use. [invalid_cpus]"
    )
    assert not list((tmp_path / "out").rglob("MANIFEST.json"))


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_cgroup_v2_quota_rounded_up(tmp_path: Path) -> None:
    group = tmp_path / "cg" / "task"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("150000 100000\n")
    proc = _proc(tmp_path, "0::/task\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == 2
    assert available_cpus({}, cgroup_root=tmp_path / "cg", proc_self=proc) == min(2, AFFINITY)
    (group / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) is None
    assert available_cpus({}, cgroup_root=tmp_path / "cg", proc_self=proc) == AFFINITY


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    group = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("50000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    proc = _proc(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == 1
    assert available_cpus({}, cgroup_root=tmp_path / "cg", proc_self=proc) == 1
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) is None


def test_ecs_task_metadata_limits_the_count(tmp_path: Path) -> None:
    endpoint = tmp_path / "metadata"
    endpoint.mkdir()
    (endpoint / "task").write_text(json.dumps({"Limits": {"CPU": 0.25, "Memory": 512}}))
    env = {"ECS_CONTAINER_METADATA_URI_V4": endpoint.as_uri()}
    assert available_cpus(env, cgroup_root=tmp_path / "none") == 1
    (endpoint / "task").write_text(json.dumps({"Limits": {"CPU": 64}}))
    assert available_cpus(env, cgroup_root=tmp_path / "none") == AFFINITY  # the smaller count wins
    env["ECS_CONTAINER_METADATA_URI_V4"] = (tmp_path / "absent").as_uri()
    assert available_cpus(env, cgroup_root=tmp_path / "none") == AFFINITY  # unreadable: ignored
