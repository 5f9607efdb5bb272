"""The result files the benchmark scripts write: what ran, its figures, the machine, the commit, the date.

Each script keeps its own table on stdout and, through ``write_result``, one JSON document under
``benchmarks/results/<name>.json`` (committed: the docs link these files instead of copying numbers).
A rerun overwrites the file; git keeps the earlier ones. The document::

    {"benchmark": name, "command": [...], "parameters": {...}, "figures": {...},
     "note": "...",                      # e.g. "shared machine: other test suites running"
     "started_utc": "...Z", "finished_utc": "...Z",
     "load_average": {"before": [1, 5, 15 min], "after": [...]},
     "git": {"commit": "...", "dirty": bool},  # at the start; dirty: code differs (docs, results ignored)
     "machine": {"cpu_model", "cores", "memory_bytes", "os", "python", "libraries": {name: version}}}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second with a ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine(libraries: tuple[str, ...]) -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and the installed versions of ``libraries``."""
    versions: dict[str, str | None] = {}
    for name in libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": _cpu_model(),
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def git_state() -> dict[str, Any]:
    """The checked-out commit and whether tracked files other than docs and results differ from it.

    None for both outside a git clone.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git(
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)*.md",
        ":(exclude)benchmarks/results",
    )
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def begin() -> dict[str, Any]:
    """What is recorded when a benchmark starts: the UTC time, the load average and the git state."""
    return {"started_utc": utc_now(), "load_before": load_average(), "git": git_state()}


def write_result(
    name: str,
    *,
    start: dict[str, Any],
    parameters: dict[str, Any],
    figures: dict[str, Any],
    libraries: tuple[str, ...],
    note: str | None = None,
    path: Path | None = None,
) -> Path:
    """Write ``benchmarks/results/<name>.json`` (or ``path``) and return where it went.

    ``start`` is what ``begin()`` returned when the benchmark started.
    """
    document = {
        "benchmark": name,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "parameters": parameters,
        "figures": figures,
        "note": note,
        "started_utc": start["started_utc"],
        "finished_utc": utc_now(),
        "load_average": {"before": start["load_before"], "after": load_average()},
        "git": start["git"],
        "machine": machine(libraries),
    }
    target = path if path is not None else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2) + "\n")
    return target
