"""The orchestrator zip: the package plus the `lambda` dependency group, nothing else, reproducible."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from q4_deploy import lambda_zip

ROOT = Path(__file__).resolve().parents[2]


def _top_level(archive: zipfile.ZipFile) -> set[str]:
    return {name.split("/", 1)[0] for name in archive.namelist()}


def test_zip_holds_the_handler_and_powertools_but_no_boto3_numpy_or_bytecode(orchestrator_zip: Path) -> None:
    with zipfile.ZipFile(orchestrator_zip) as archive:
        names = archive.namelist()
        top = _top_level(archive)
        assert "q4_orchestrator/handler.py" in names
        assert "q4_contract/__init__.py" in names  # the contract the task shares, not the task itself
        assert "aws_lambda_powertools" in top
        assert not top & {"boto3", "botocore", "numpy", "q4", "pytest", "moto", "bin", ".lock"}
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert names == sorted(names)
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_zip_packages_are_the_repository_packages(orchestrator_zip: Path) -> None:
    with zipfile.ZipFile(orchestrator_zip) as archive:
        for package in (ROOT / "orchestrator" / "q4_orchestrator", ROOT / "contract" / "q4_contract"):
            sources = list(package.glob("*.py"))
            assert sources
            for source in sources:
                assert archive.read(f"{package.name}/{source.name}") == source.read_bytes()


def test_rebuilding_gives_the_same_bytes_and_the_terraform_hash(
    orchestrator_zip: Path, tmp_path: Path
) -> None:
    again = lambda_zip.build(tmp_path / "again.zip")
    assert again.read_bytes() == orchestrator_zip.read_bytes()
    expected = base64.b64encode(hashlib.sha256(again.read_bytes()).digest()).decode()
    assert lambda_zip.source_code_hash(again) == expected


def test_handler_imports_from_the_zip_alone(orchestrator_zip: Path, tmp_path: Path) -> None:
    # The runtime adds boto3; everything else the handler imports must come from the zip.
    with zipfile.ZipFile(orchestrator_zip) as archive:
        archive.extractall(tmp_path / "task")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]];"
        "import q4_orchestrator.handler as h, aws_lambda_powertools;"
        "assert aws_lambda_powertools.__file__.startswith(sys.argv[1]);"
        "print(callable(h.lambda_handler))"
    )
    env = {"AWS_DEFAULT_REGION": "us-east-1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "task")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_command_line_reports_the_zip(tmp_path: Path) -> None:
    out = tmp_path / "cli.zip"
    result = subprocess.run(
        [sys.executable, "-m", "q4_deploy.lambda_zip", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and lambda_zip.source_code_hash(out) in result.stdout
