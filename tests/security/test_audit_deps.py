"""The dependency audit: scripts/audit_deps.sh (real `uv audit`) against scripts/osv_mirror.py.

The script tests run the real script in a subprocess; uv audit reads the real uv.lock and talks HTTP to a
local OSV server over a temporary directory of made-up records. Every record gets a fresh id: uv caches
records by id (revalidated by their `modified`), so ids must not be reused across runs with other content.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "audit_deps.sh"
PACKAGE = "packaging"  # a locked package with a single version in uv.lock


def _load_mirror() -> ModuleType:
    spec = importlib.util.spec_from_file_location("osv_mirror", ROOT / "scripts" / "osv_mirror.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["osv_mirror"] = module
    spec.loader.exec_module(module)
    return module


osv_mirror = _load_mirror()


def _uv_has_audit() -> bool:
    if shutil.which("uv") is None:
        return False
    return subprocess.run(["uv", "audit", "--help"], capture_output=True, cwd=ROOT).returncode == 0


needs_uv_audit = pytest.mark.skipif(not _uv_has_audit(), reason="the installed uv has no `uv audit` command")


def locked_version(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = [p["version"] for p in lock["package"] if p["name"] == name]
    assert len(versions) == 1, versions
    return str(versions[0])


def record(
    vuln_id: str,
    name: str,
    *,
    ranges: list[dict[str, str]] | None = None,
    versions: list[str] | None = None,
    aliases: list[str] | None = None,
) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"name": name, "ecosystem": "PyPI"}}
    if ranges is not None:
        affected["ranges"] = [{"type": "ECOSYSTEM", "events": ranges}]
    if versions is not None:
        affected["versions"] = versions
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "id": vuln_id,
        "modified": now,
        "published": now,
        "aliases": aliases or [],
        "summary": "made-up advisory for the audit tests",
        "affected": [affected],
    }


# --- the matcher -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "version", "expected"),
    [
        ([{"introduced": "0"}, {"fixed": "2.0"}], "1.9.9", True),
        ([{"introduced": "0"}, {"fixed": "2.0"}], "2.0", False),  # fixed excludes itself
        ([{"introduced": "0"}, {"fixed": "2.0"}], "2.0rc1", True),  # pre-releases sort before the release
        ([{"introduced": "0"}, {"fixed": "2.0"}], "0.0.dev0", True),  # "0" is below every version
        ([{"introduced": "1.5"}, {"fixed": "2.0"}], "1.4", False),
        ([{"introduced": "1.5"}, {"fixed": "2.0"}], "1.5", True),  # introduced includes itself
        ([{"introduced": "1.5"}], "99", True),  # no fix yet
        ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2", True),  # last_affected is inclusive
        ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2.1", False),
        # two windows in one range, events out of order
        ([{"fixed": "3.1"}, {"introduced": "3.0"}, {"fixed": "1.1"}, {"introduced": "0"}], "2.0", False),
        ([{"fixed": "3.1"}, {"introduced": "3.0"}, {"fixed": "1.1"}, {"introduced": "0"}], "3.0.5", True),
        ([{"fixed": "3.1"}, {"introduced": "3.0"}, {"fixed": "1.1"}, {"introduced": "0"}], "1.0", True),
        ([{"introduced": "1.0"}, {"fixed": "1.10"}], "1.9", True),  # numeric, not string, comparison
        ([{"introduced": "0"}, {"fixed": "not-a-version!"}], "5.0", True),  # unparsable: fail closed
    ],
)
def test_range_affects(events: list[dict[str, str]], version: str, expected: bool) -> None:
    assert osv_mirror.range_affects(events, Version(version)) is expected


def test_affects_names_versions_ecosystem_withdrawn() -> None:
    rec = record("T-1", "Zope.Interface", ranges=[{"introduced": "0"}, {"fixed": "5.0"}], versions=["7.1"])
    assert osv_mirror.affects(rec, "zope-interface", "4.0")  # PEP 503: case, "." and "_" are "-"
    assert osv_mirror.affects(rec, "ZOPE_interface", "4.0")
    assert osv_mirror.affects(rec, "zope-interface", "7.1")  # explicit versions list
    assert osv_mirror.affects(rec, "zope-interface", "7.1.0")  # PEP 440 equality
    assert not osv_mirror.affects(rec, "zope-interface", "6.0")
    assert not osv_mirror.affects(rec, "zope-interfaces", "4.0")
    npm = {"name": "zope.interface", "ecosystem": "npm"}
    other = dict(rec, affected=[dict(rec["affected"][0], package=npm)])
    assert not osv_mirror.affects(other, "zope-interface", "4.0")
    assert not osv_mirror.affects(dict(rec, withdrawn="2024-01-01T00:00:00Z"), "zope-interface", "4.0")
    git_only = record("T-2", "x", ranges=[{"introduced": "0"}])
    git_only["affected"][0]["ranges"][0]["type"] = "GIT"
    assert not osv_mirror.affects(git_only, "x", "1.0")


def test_load_records_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text(json.dumps(record("T-JSON", "a", versions=["1"])))
    (tmp_path / "b.yaml").write_text(
        "id: T-YAML\nmodified: '2024-01-01T00:00:00Z'\naffected:\n"
        "- package: {name: B, ecosystem: PyPI}\n  versions: ['2']\n"
    )
    records = osv_mirror.load_records(tmp_path)
    assert set(records) == {"T-JSON", "T-YAML"}
    assert [r["id"] for r in osv_mirror.Index(records).query("b", "2")] == ["T-YAML"]
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ValueError, match="not an OSV record"):
        osv_mirror.load_records(tmp_path)


def test_mirror_http(tmp_path: Path) -> None:
    rec = record("T-HTTP", "Demo_Pkg", ranges=[{"introduced": "1.0"}, {"fixed": "1.5"}])
    withdrawn = dict(record("T-GONE", "demo-pkg", versions=["1.2"]), withdrawn="2024-01-01T00:00:00Z")
    server = osv_mirror.serve(osv_mirror.Index({"T-HTTP": rec, "T-GONE": withdrawn}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        pkg = {"name": "demo-pkg", "ecosystem": "PyPI"}
        queries: list[dict[str, Any]] = [{"package": pkg, "version": v} for v in ("1.2", "1.5")]
        queries.append({"package": {"name": "demo-pkg", "ecosystem": "npm"}, "version": "1.2"})
        req = urllib.request.Request(
            f"{base}/v1/querybatch",
            data=json.dumps({"queries": queries}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            results = json.load(resp)["results"]
        assert results == [{"vulns": [{"id": "T-HTTP", "modified": rec["modified"]}]}, {}, {}]
        with urllib.request.urlopen(f"{base}/v1/vulns/T-HTTP", timeout=5) as resp:
            assert json.load(resp) == rec
        for missing in ("T-GONE", "NOPE"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}/v1/vulns/{missing}", timeout=5)
            assert err.value.code == 404
            err.value.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- the script, end to end --------------------------------------------------------------------------------


@pytest.fixture
def osv_db(tmp_path: Path) -> Path:
    db = tmp_path / "osv"
    db.mkdir()
    return db


def run_audit(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    allowlist = tmp_path / "allowlist.txt"
    if not allowlist.exists():
        allowlist.write_text("# none\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("Q4_")}
    full_env.update({"Q4_AUDIT_ALLOWLIST": str(allowlist), "UV_HTTP_RETRIES": "0", **env})
    return subprocess.run([str(SCRIPT)], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120)


def _new_id() -> str:
    return f"Q4-TEST-{uuid.uuid4().hex[:12].upper()}"


@needs_uv_audit
def test_advisory_for_the_locked_version_fails(tmp_path: Path, osv_db: Path) -> None:
    version = locked_version(PACKAGE)
    vuln_id = _new_id()
    rec = record(
        vuln_id,
        PACKAGE.capitalize(),
        versions=[version],
        aliases=["CVE-2099-0001"],
        ranges=[{"introduced": "0"}, {"fixed": "9999"}],
    )
    (osv_db / f"{vuln_id}.json").write_text(json.dumps(rec))
    result = run_audit(tmp_path, Q4_OSV_DB=str(osv_db))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"{PACKAGE} {version}: {vuln_id} (CVE-2099-0001), fixed in 9999" in result.stdout
    assert "audit_deps: ok" not in out


@needs_uv_audit
def test_allow_listed_advisory_passes(tmp_path: Path, osv_db: Path) -> None:
    version = locked_version(PACKAGE)
    vuln_id = _new_id()
    (osv_db / f"{vuln_id}.json").write_text(json.dumps(record(vuln_id, PACKAGE, versions=[version])))
    (tmp_path / "allowlist.txt").write_text(f"# test\n{vuln_id}  # {PACKAGE} {version}: made up\n")
    result = run_audit(tmp_path, Q4_OSV_DB=str(osv_db))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 known vulnerabilities" in result.stdout and "(1 ids in" in result.stdout
    assert result.stdout.rstrip().endswith("audit_deps: ok")


@needs_uv_audit
def test_advisory_for_other_versions_passes(tmp_path: Path, osv_db: Path) -> None:
    version = locked_version(PACKAGE)
    vuln_id = _new_id()
    # Fixed exactly in the locked version, so only older ones are affected; YAML, as the PyPA database.
    (osv_db / f"{vuln_id}.yaml").write_text(
        f"id: {vuln_id}\nmodified: '{datetime.now(UTC).isoformat()}'\naffected:\n"
        f"- package: {{name: {PACKAGE}, ecosystem: PyPI}}\n"
        f"  ranges:\n  - type: ECOSYSTEM\n    events: [{{introduced: '0'}}, {{fixed: '{version}'}}]\n"
    )
    result = run_audit(tmp_path, Q4_OSV_DB=str(osv_db))
    assert result.returncode == 0, result.stdout + result.stderr
    audited = re.search(r"(\d+) of (\d+) locked packages audited", result.stdout)
    assert audited is not None and audited[1] == audited[2], result.stdout
    assert "0 known vulnerabilities" in result.stdout
    assert result.stdout.rstrip().endswith("audit_deps: ok")


@needs_uv_audit
def test_unreachable_service_is_not_ok(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the script runs: nothing listens there
    result = run_audit(tmp_path, Q4_OSV_URL=f"http://127.0.0.1:{port}")
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "NOT done" in out
    assert "audit_deps: ok" not in out
    assert not re.search(r"\bok\b", out, re.IGNORECASE), out
