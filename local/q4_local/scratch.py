"""A task's ephemeral storage on the local stack: the quota the Fargate stand-in enforces on its scratch dir.

The quota is the task's ephemeral storage (RunTask's task-level ``overrides.ephemeralStorage``, else the task
definition's, else Fargate's default 20 GiB), capped by the stack's local-only scratch limit
(``q4 local up --scratch-limit-mib N``) when one is set. Two ways to enforce it (docs/decisions/local.md,
"Scratch quota"):

- **tmpfs**: when a limit is set and the runtime may mount (root on Linux), the scratch dir is a tmpfs of the
  quota's size: a write past it fails with ENOSPC, as on Fargate. Unmounted when the task stops.
- **watcher**: otherwise the runtime measures the scratch dir on every tick and stops the task once it holds
  more than the quota (:data:`EXHAUSTED_STOP_CODE`, no exit code: a crash).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Ephemeral storage of a Fargate task whose definition and overrides set none, GiB.
FARGATE_DEFAULT_GIB = 20
#: The default of ``q4 local up --scratch-limit-mib`` (MiB; 0 or unset: no local limit).
LIMIT_ENV = "Q4_LOCAL_SCRATCH_LIMIT_MIB"
#: The stop code of a task the watcher stopped (ECS's code for a task whose essential container ended).
EXHAUSTED_STOP_CODE = "EssentialContainerExited"
EXHAUSTED_REASON = "EphemeralStorageExhausted"


@dataclass(frozen=True)
class Quota:
    """The scratch quota of one task: its size in MiB and whether a tmpfs of that size enforces it."""

    mib: int
    mounted: bool

    @property
    def bytes(self) -> int:
        return self.mib * 1024 * 1024


def task_storage_mib(task: dict[str, Any], definition: dict[str, Any]) -> int:
    """The task's ephemeral storage in MiB: the RunTask overrides', else the definition's, else 20 GiB."""
    overrides = task.get("overrides") or {}
    storage = overrides.get("ephemeralStorage") or definition.get("ephemeralStorage") or {}
    return int(storage.get("sizeInGiB") or FARGATE_DEFAULT_GIB) * 1024


def quota_mib(task: dict[str, Any], definition: dict[str, Any], limit_mib: int | None) -> int:
    """The quota enforced on the task's scratch dir: its ephemeral storage, capped by the local limit."""
    storage = task_storage_mib(task, definition)
    return min(storage, limit_mib) if limit_mib else storage


def can_mount() -> bool:
    """True where the runtime may mount a tmpfs: root on Linux with ``mount`` on PATH."""
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount") is not None


def prepare(scratch: Path, mib: int, mount: bool) -> Quota:
    """Create ``scratch`` and, when ``mount``, mount a tmpfs of ``mib`` MiB on it (an empty, fresh volume);
    the watcher enforces the quota where the mount fails."""
    scratch.mkdir(parents=True, exist_ok=True)
    if not mount or os.path.ismount(scratch):
        return Quota(mib, os.path.ismount(scratch))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "q4-scratch", str(scratch)],
        capture_output=True,
        text=True,
        check=False,
    )
    return Quota(mib, result.returncode == 0 and os.path.ismount(scratch))


def usage_bytes(scratch: Path) -> int:
    """Bytes the scratch dir holds: the filesystem's used blocks for a tmpfs, else the allocated blocks of
    every file under it (a sparse file counts what it holds)."""
    if os.path.ismount(scratch):
        stats = os.statvfs(scratch)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    total = 0
    for directory, _, files in os.walk(scratch):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we look
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def release(scratch: Path) -> None:
    """Unmount the tmpfs on ``scratch`` (lazily: a straggling process keeps it until it exits)."""
    if os.path.ismount(scratch):
        subprocess.run(["umount", "-l", str(scratch)], capture_output=True, check=False)


def release_all(tasks_dir: Path) -> None:
    """Unmount every scratch tmpfs under ``tasks_dir`` (a runtime that died left them mounted)."""
    if not tasks_dir.is_dir():
        return
    for task_dir in tasks_dir.iterdir():
        release(task_dir / "scratch")


def exhausted_reason(used: int, quota: Quota) -> str:
    """The stop reason of a task the watcher stopped."""
    return (
        f"{EXHAUSTED_REASON}: the task's scratch dir held {used / 1048576:.1f} MiB, more than its "
        f"{quota.mib} MiB of ephemeral storage (local runtime)"
    )
