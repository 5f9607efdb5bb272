"""How many CPUs this process may really use, to size q4's thread pools (and pyarrow's).

``os.cpu_count()`` is the host's count: on Fargate, in a container with a CPU quota or under ``taskset``
it overstates what the task gets, and pools sized from it only add contention. :func:`available_cpus`
takes the smallest of:

- the CPUs in this process's affinity mask (``os.sched_getaffinity``);
- the cgroup v2 quota (``cpu.max``: ``quota period``, rounded up), or cgroup v1's
  ``cpu.cfs_quota_us / cpu.cfs_period_us``, of the cgroup this process is in;
- the ECS task size (the task metadata endpoint v4's ``Limits.CPU``, in vCPUs, rounded up) when
  ``ECS_CONTAINER_METADATA_URI_V4`` is set;

and at least 1. ``Q4_CPUS`` (a positive integer) overrides it all: tests and benchmarks use it; any other
value is refused (``invalid_cpus``) rather than guessed at.
"""

from __future__ import annotations

import json
import math
import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from q4.errors import InputError

CPUS_ENV = "Q4_CPUS"
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(
    environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT, proc_self: Path | None = None
) -> int:
    """The CPUs this process may use (see the module's docstring); ``Q4_CPUS`` wins when set."""
    env = os.environ if environ is None else environ
    override = env.get(CPUS_ENV, "").strip()
    if override:
        if not (override.isascii() and override.isdigit() and int(override) >= 1):
            raise InputError(
                "invalid_cpus",
                f"{CPUS_ENV} must be a positive whole number of CPUs, not {override!r}; "
                f"unset it to use every CPU this process may use.",
                {"value": override},
            )
        return int(override)
    limits = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    quota = cgroup_cpu_limit(cgroup_root, proc_self or Path("/proc/self/cgroup"))
    if quota is not None:
        limits.append(quota)
    uri = env.get(METADATA_ENV)
    if uri:
        task = ecs_cpu_limit(uri)
        if task is not None:
            limits.append(task)
    return max(1, min(limits))


def cgroup_cpu_limit(root: Path, proc_self_cgroup: Path) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), None when unlimited/unknown."""
    for folder in _cgroup_dirs(root, proc_self_cgroup):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            parts = v2.split()
            if len(parts) == 2 and parts[0] != "max":
                return _ceil_ratio(parts[0], parts[1])
            continue
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None and quota.strip() != "-1":
            return _ceil_ratio(quota, period)
    return None


def _cgroup_dirs(root: Path, proc_self_cgroup: Path) -> list[Path]:
    """This process's own cgroup folders (v2 unified and v1 ``cpu`` controller), then the root."""
    dirs: list[Path] = []
    text = _read(proc_self_cgroup) or ""
    for line in text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        relative = path.strip().lstrip("/")
        if controllers == "":  # v2: 0::/path
            dirs.append(root / relative)
        elif "cpu" in controllers.split(","):  # v1: 4:cpu,cpuacct:/path
            dirs.extend(
                [root / controllers / relative, root / "cpu" / relative, root / "cpu,cpuacct" / relative]
            )
    dirs.extend([root, root / "cpu", root / "cpu,cpuacct"])
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _ceil_ratio(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def ecs_cpu_limit(uri: str) -> int | None:
    """The task's vCPUs (``Limits.CPU`` of ``$uri/task``, rounded up), None when unreadable."""
    try:
        with urllib.request.urlopen(f"{uri}/task", timeout=2) as response:
            cpu = (json.loads(response.read()).get("Limits") or {}).get("CPU")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(cpu, int | float) and not isinstance(cpu, bool) and cpu > 0:
        return max(1, math.ceil(cpu))
    return None
