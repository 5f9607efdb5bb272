"""Two `q4 run` processes on one run directory: one writer, the other exits 2 and touches nothing.

Real processes and real files: the first `q4 run` is frozen (SIGSTOP) while it holds the run's lock
in the middle of its job, so the second one is known to start while the first is writing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from q4.cli.run import RunBusy, RunLock, lock_path
from support.tables import read_json

Q4 = str(Path(sys.executable).with_name("q4"))
BUSY = "is being written by another q4 run (pid {pid}) in {out}; wait for it or choose another --run-id."


def _big_csv(path: Path, seed: int, repeats: int = 40) -> Path:
    """~15 MB: 5,000 random rows repeated (a few tenths of a second of work for q4 run)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5000, 4)) @ rng.standard_normal((4, 4))
    block = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a,b,c,d\n" + block * repeats, encoding="utf-8")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "Q4_SCRATCH_DIR": str(scratch)}


def _start(src: Path, out: Path, run_id: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [Q4, "run", str(src), "--out", str(out), "--run-id", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_lock(proc: subprocess.Popen[str], lock: Path, timeout: float = 30) -> None:
    """Until ``proc`` holds the run's lock (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, f"q4 run ended before it was seen holding the lock: {proc.communicate()}"
        time.sleep(0.001)
    raise AssertionError("q4 run did not take the run's lock")


def _assert_committed_from(run_dir: Path, src: Path) -> None:
    """MANIFEST.json lists exactly the files on disk, every sha256 matches, all of them from ``src``."""
    manifest = read_json(run_dir / "MANIFEST.json")
    listed = {a["key"]: a for a in manifest["artifacts"]}
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk - {"MANIFEST.json"} == set(listed)
    for key, artifact in listed.items():
        data = (run_dir / key).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (artifact["bytes"], artifact["sha256"]), key
    assert [i["sha256"] for i in manifest["inputs"]] == [_sha(src)]
    assert read_json(run_dir / "output" / "Q_study.json")["input"]["sha256"] == [_sha(src)]
    assert not (run_dir / "ERROR.json").exists()


def test_a_second_run_while_the_first_writes_exits_2_and_changes_nothing(tmp_path):
    a = _big_csv(tmp_path / "a" / "data.csv", seed=1)
    b = _big_csv(tmp_path / "b" / "data.csv", seed=2, repeats=1)
    out, env = tmp_path / "out", _env(tmp_path)
    first = _start(a, out, "same", env)
    try:
        _wait_for_lock(first, lock_path(out, "same"))
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-job, holding the lock
        assert not (out / "run=same" / "MANIFEST.json").exists(), "the first run finished too soon"
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        second = subprocess.run(
            [Q4, "run", str(b), "--out", str(out), "--run-id", "same"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert first.poll() is None  # still running (stopped) while the second one ended
        assert second.returncode == 2, second.stderr
        assert second.stderr == f"q4: error: Run same {BUSY.format(pid=first.pid, out=out)} [run_busy]\n"
        assert second.stdout == ""
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "run same succeeded: 200,000 rows" in stdout
    _assert_committed_from(out / "run=same", a)
    assert not lock_path(out, "same").exists()  # released and removed
    assert sorted(p.name for p in out.iterdir()) == ["run=same"]


def test_two_runs_started_at_once_one_commits_the_other_exits_2(tmp_path):
    # the reviewer's case: same run id, two inputs, both started together
    a = _big_csv(tmp_path / "a" / "data.csv", seed=3, repeats=10)
    b = _big_csv(tmp_path / "b" / "data.csv", seed=4, repeats=10)
    out, env = tmp_path / "out", _env(tmp_path)
    procs = {src: _start(src, out, "race", env) for src in (a, b)}
    results = {src: (p.wait(timeout=120), *p.communicate()) for src, p in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    (winner,) = [src for src, (code, _, _) in results.items() if code == 0]
    (loser,) = [src for src, (code, _, _) in results.items() if code == 2]
    _, _, err = results[loser]
    assert "Traceback" not in err and err.count("\n") == 1
    # it found the winner writing, or (had it started late) the winner's commit of another input
    assert "is being written by another q4 run (pid" in err or "already committed with another job" in err
    _assert_committed_from(out / "run=race", winner)


def test_a_killed_run_leaves_no_lock_behind_and_the_next_run_completes(tmp_path):
    a = _big_csv(tmp_path / "a" / "data.csv", seed=5)
    small = _big_csv(tmp_path / "small.csv", seed=6, repeats=1)
    out, env = tmp_path / "out", _env(tmp_path)
    first = _start(a, out, "crash", env)
    _wait_for_lock(first, lock_path(out, "crash"))
    first.kill()  # SIGKILL mid-job: no cleanup runs, the lock file stays; the kernel drops the lock
    first.communicate(timeout=60)
    assert lock_path(out, "crash").exists() and not (out / "run=crash" / "MANIFEST.json").exists()
    again = subprocess.run(
        [Q4, "run", str(small), "--out", str(out), "--run-id", "crash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    _assert_committed_from(out / "run=crash", small)
    assert not lock_path(out, "crash").exists()


def test_the_lock_is_exclusive_names_its_owner_and_is_removed_on_release(tmp_path):
    path = lock_path(tmp_path, "r")
    with RunLock.acquire(path):
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunBusy) as busy:  # another open file description: refused at once
            RunLock.acquire(path)
        assert busy.value.pid == os.getpid()
    assert not path.exists()
    path.write_text("999999999\n")  # left by a killed process: not locked, taken over
    with RunLock.acquire(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_a_commit_is_refused_when_the_files_changed_after_hashing(tmp_path):
    from q4 import JobSpec, run_job
    from q4.errors import RunStateError
    from q4.job import verify_unchanged

    src = _big_csv(tmp_path / "in.csv", seed=7, repeats=1)
    result = run_job([src], tmp_path / "run=v", JobSpec(run_id="v"))
    verify_unchanged(result)  # as written
    keep = tmp_path / "run=v" / "output" / "Q_keep.csv"
    for damage, phrase in [
        (lambda: (tmp_path / "run=v" / "output" / "stray.csv").write_text("x"), "stray.csv appeared"),
        (lambda: keep.write_bytes(keep.read_bytes() + b"1,2,3,4\n"), "Q_keep.csv changed"),
        (lambda: keep.unlink(), "Q_keep.csv disappeared"),
    ]:
        damage()
        with pytest.raises(RunStateError, match=phrase) as refused:
            verify_unchanged(result)
        assert refused.value.code == "run_changed" and "nothing was committed" in refused.value.message
        (tmp_path / "run=v" / "output" / "stray.csv").unlink(missing_ok=True)


def test_a_row_output_hashed_as_written_is_refused_once_the_file_it_closed_changed(tmp_path):
    from q4.errors import RunStateError
    from q4.job import _artifacts
    from q4.outputs import HashedFile

    run_dir = tmp_path / "run=h"
    (run_dir / "output").mkdir(parents=True)
    path = run_dir / "output" / "Q_keep.csv"
    sink = HashedFile(path)
    sink.write(b"a,b\n")
    sink.write(memoryview(b"1,2\n"))
    sink.close()
    written = {"output/Q_keep.csv": sink}
    (artifact,) = _artifacts(run_dir, "h", {}, written)
    assert (artifact.bytes, artifact.sha256) == (8, _sha(path))
    time.sleep(0.01)  # the file systems' mtime ticks
    path.write_bytes(b"a,b\n9,9\n")  # another program rewrote it: the same size, other bytes
    with pytest.raises(RunStateError, match=r"Q_keep\.csv changed"):
        list(_artifacts(run_dir, "h", {}, written))
    path.write_bytes(b"a,b\n1,2\n3,4\n")  # ... or appended a row
    with pytest.raises(RunStateError, match=r"Q_keep\.csv changed"):
        list(_artifacts(run_dir, "h", {}, written))
    path.unlink()
    with pytest.raises(RunStateError, match=r"Q_keep\.csv disappeared"):
        list(_artifacts(run_dir, "h", {}, written))
