"""The local stack's state directory: what `q4 local up` started and where everything lives.

Layout (default ``.q4/local/`` under the current directory, or ``$Q4_LOCAL_STATE_DIR``)::

    stack.json          endpoint, pids (with start stamps), terraform outputs, lambda code zips
    moto.log            the emulator's log
    runtime.log         the local runtime's log (event source mapping, EventBridge, Fargate stand-in)
    terraform/          a copy of infrastructure/ plus the endpoint override and its state
    build/              the orchestrator zip that terraform deployed
    lambda/<sha>/       the deployed zip, unpacked, as the Lambda runtime would
    ledger.json         tasks the runtime has run (survives runtime restarts)
    tasks/<task-id>/    each task's scratch dir (Q4_SCRATCH_DIR) and log
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "Q4_LOCAL_STATE_DIR"
DEFAULT_STATE_DIR = Path(".q4") / "local"


def state_dir(explicit: Path | str | None = None) -> Path:
    """The state directory: ``explicit``, else ``$Q4_LOCAL_STATE_DIR``, else ``./.q4/local``, absolute."""
    chosen = explicit or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().resolve()


@dataclass
class ProcessRecord:
    """A process `up` started: its pid, when it started (to tell it from a reused pid) and a marker
    that must appear in its command line."""

    pid: int
    started: str
    marker: str

    @classmethod
    def of(cls, pid: int, marker: str) -> ProcessRecord:
        return cls(pid=pid, started=process_start_stamp(pid) or "", marker=marker)

    def is_ours(self) -> bool:
        """True when the pid still names the very process `up` started."""
        stamp = process_start_stamp(self.pid)
        if not stamp or stamp != self.started:
            return False
        return self.marker in process_command(self.pid)


@dataclass
class StackState:
    """Contents of ``stack.json``."""

    endpoint_url: str
    region: str
    moto: ProcessRecord | None = None
    runtime: ProcessRecord | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    lambda_zips: dict[str, str] = field(default_factory=dict)  # function name -> zip terraform deployed
    ready: bool = False
    task_image: str | None = None  # `q4 local up --task-image REF`: tasks run inside this image
    scratch_limit_mib: int | None = None  # `q4 local up --scratch-limit-mib N`: caps each task's scratch

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        data = json.loads(text)
        for key in ("moto", "runtime"):
            if data.get(key):
                data[key] = ProcessRecord(**data[key])
        return cls(**data)


def state_file(directory: Path) -> Path:
    return directory / "stack.json"


def load(directory: Path) -> StackState | None:
    path = state_file(directory)
    if not path.exists():
        return None
    return StackState.from_json(path.read_text())


def save(directory: Path, state: StackState) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = state_file(directory)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    tmp.replace(path)


def process_start_stamp(pid: int) -> str | None:
    """The process's start time as the OS reports it (``/proc`` on Linux, ``ps`` elsewhere), or None."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            # Field 22 (starttime) follows the command name, which is in parentheses and may hold spaces.
            return stat.read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return None
    if sys.platform.startswith("linux"):
        return None
    result = subprocess.run(
        ["ps", "-p", str(pid), "-o", "lstart="], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def process_command(pid: int) -> str:
    """The process's command line joined by spaces ('' when it is gone)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    result = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
