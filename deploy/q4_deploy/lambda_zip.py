"""Build the orchestrator Lambda zip: ``orchestrator/q4_orchestrator``, ``contract/q4_contract`` and the
``lambda`` dependency group.

The zip is reproducible (sorted entries, fixed timestamps and permissions, no bytecode), so Terraform's
``source_code_hash`` only changes when the code or its pinned dependencies change. boto3 is not packed: the
python3.12 runtime provides it.

Run as ``python -m q4_deploy.lambda_zip [--out build/orchestrator.zip]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from q4.errors import Q4Error

PROJECT_DIR = Path(__file__).resolve().parents[2]
PACKAGE_DIR = PROJECT_DIR / "orchestrator" / "q4_orchestrator"
#: The packages the zip carries: the handler and the contract it shares with the task (stdlib only).
PACKAGE_DIRS = (PACKAGE_DIR, PROJECT_DIR / "contract" / "q4_contract")
DEFAULT_ZIP = PROJECT_DIR / "build" / "orchestrator.zip"
DEPENDENCY_GROUP = "lambda"
# The Lambda runtime the zip targets (Terraform: runtime = "python3.12", architectures = ["x86_64"]).
TARGET_PYTHON = "3.12"
TARGET_PLATFORM = "x86_64-manylinux_2_28"

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_EXCLUDED_DIRS = {"__pycache__", "tests"}
# uv's install lock and console scripts (the runtime never runs them).
_EXCLUDED_TOP_LEVEL = {".lock", "bin"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class LambdaZipError(Q4Error):
    """The orchestrator zip could not be built."""


def _run(args: Sequence[str], what: str) -> str:
    try:
        result = subprocess.run(list(args), cwd=PROJECT_DIR, text=True, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise LambdaZipError("uv_missing", f"{args[0]} is not on PATH; install uv and try again.") from exc
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LambdaZipError("lambda_zip_failed", f"Could not {what}: {last}")
    return result.stdout


def export_requirements() -> str:
    """The ``lambda`` group pinned from uv.lock, as a requirements file (no hashes, no project)."""
    return _run(
        [
            "uv",
            "export",
            "--only-group",
            DEPENDENCY_GROUP,
            "--frozen",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--no-annotate",
        ],
        "export the lambda dependency group",
    )


def install_dependencies(requirements: str, target: Path) -> None:
    """Install ``requirements`` into ``target`` as the python3.12 x86_64 Lambda runtime would see them."""
    req_file = target.parent / "requirements.txt"
    req_file.write_text(requirements)
    if not requirements.strip() or all(ln.startswith("#") for ln in requirements.splitlines() if ln.strip()):
        return
    _run(
        [
            "uv",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(target),
            "--requirement",
            str(req_file),
            "--python-version",
            TARGET_PYTHON,
            "--python-platform",
            TARGET_PLATFORM,
            "--only-binary",
            ":all:",
            "--no-compile",
            "--link-mode",
            "copy",
        ],
        "install the lambda dependencies",
    )


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        parts = path.relative_to(root).parts
        if path.is_dir() or parts[0] in _EXCLUDED_TOP_LEVEL or any(part in _EXCLUDED_DIRS for part in parts):
            continue
        if path.suffix in _EXCLUDED_SUFFIXES:
            continue
        yield path


def write_zip(staging: Path, out: Path) -> Path:
    """Zip ``staging`` deterministically into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in _files(staging):
            info = zipfile.ZipInfo(path.relative_to(staging).as_posix(), date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (0o100755 if os.access(path, os.X_OK) else 0o100644) << 16
            archive.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def build(out: Path = DEFAULT_ZIP, *, with_dependencies: bool = True) -> Path:
    """Build the orchestrator zip at ``out`` and return its path."""
    for package in PACKAGE_DIRS:
        if not (package / "__init__.py").is_file():
            raise LambdaZipError(
                "lambda_zip_failed", f"{package} is not a Python package; run from a q4 checkout."
            )
    with tempfile.TemporaryDirectory(prefix="q4-lambda-") as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        if with_dependencies:
            install_dependencies(export_requirements(), staging)
        for package in PACKAGE_DIRS:
            shutil.copytree(
                package, staging / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        return write_zip(staging, out)


def source_code_hash(path: Path) -> str:
    """What Terraform's ``filebase64sha256(path)`` returns for the zip."""
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m q4_deploy.lambda_zip", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_ZIP, help="zip to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except Q4Error as exc:
        print(f"build_lambda_zip: error: {exc.message}", file=sys.stderr)
        return 1
    print(f"{path} {path.stat().st_size} bytes sha256(base64)={source_code_hash(path)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
