"""`q4 CMD` imports only CMD's module (so `q4 run` does not pay for boto3), and `q4 --help` still lists
every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

Q4 = str(Path(sys.executable).parent / "q4")
PROBE = """
import sys
from q4.cli import build_parser, _chosen_command
build_parser(_chosen_command(sys.argv[1:]))
print(",".join(sorted(m for m in sys.modules if m.startswith(("q4.cli.", "boto3")))))
"""


def _imported(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.strip().split(","))


def test_run_imports_only_its_module() -> None:
    imported = _imported("run", "table.csv", "--out", "x")
    assert "q4.cli.run" in imported
    assert "boto3" not in imported and "q4.cli.submit" not in imported and "q4.cli.fetch" not in imported


def test_help_and_unknown_commands_list_every_command() -> None:
    imported = _imported("--help")
    assert {"q4.cli.run", "q4.cli.submit", "q4.cli.cancel", "q4.cli.logs"} <= imported
    listed = subprocess.run([Q4, "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    for command in ("run", "submit", "status", "runs", "fetch", "dlq", "logs", "cancel", "local", "demo"):
        assert f"    {command} " in listed
    wrong = subprocess.run([Q4, "bogus"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "'cancel'" in wrong.stderr and "'demo'" in wrong.stderr


KEPT_OUT = """
import sys
sys.argv = ["q4", "run", sys.argv[1], "--out", sys.argv[2], "--mode", "full", "--output-format", "parquet"]
from q4.cli import main
code = main()  # as the console script calls it
try:
    import pandas  # noqa: F401
except ModuleNotFoundError as exc:
    print(code, "refused" if "q4.nopandas" in str(exc) else "missing")
else:
    print(code, "imported")
"""

LIBRARY = """
import sys
from q4.cli import main
code = main(["run", sys.argv[1], "--out", sys.argv[2]])  # q4 called from Python code
refused = any(getattr(finder, "__name__", "") == "_NoPandas" for finder in sys.meta_path)
import pandas  # noqa: E402, F401 (importable: q4 left the import to its caller)
print(code, "refused" if refused else "importable")
"""


def _last_words(script: str, *args: Path) -> list[str]:
    """Run ``script`` in a fresh interpreter; the last two words it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-2:]


def test_the_console_script_keeps_pandas_out_and_library_callers_keep_it(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("a,b,c\n" + "".join(f"{i},{(i * 7) % 11},{(i * 5) % 13}\n" for i in range(200)))
    # the console script (q4 run, full mode: plots and report too) runs without importing pandas ...
    assert _last_words(KEPT_OUT, src, tmp_path / "a") == ["0", "refused"]
    assert list((tmp_path / "a").glob("run=*/MANIFEST.json"))
    # ... while q4 called from Python leaves the import to its caller
    assert _last_words(LIBRARY, src, tmp_path / "b") == ["0", "importable"]
