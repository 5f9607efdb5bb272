#!/usr/bin/env bash
# Audit the locked Python dependencies (uv.lock) for known vulnerabilities with pip-audit.
#
#   scripts/audit_deps.sh                         every group and extra of uv.lock, PyPI's vulnerability data
#   AUDIT_SERVICE=osv scripts/audit_deps.sh       the OSV database instead (api.osv.dev)
#
# The requirements come from `uv export --frozen` (exact versions and hashes of the lock file, nothing
# resolved again) and pip-audit reads them without pip (--disable-pip --require-hashes). It needs the
# network: PyPI's JSON API (https://pypi.org/pypi/<name>/<version>/json) or api.osv.dev.
#
# Exit codes: 0 every locked package was audited and every finding is in the allow-list;
# 1 a known vulnerability that is not allow-listed; 2 the audit could not be done (no network, a package
# the vulnerability service does not know, pip-audit failing). pip-audit itself reports "No known
# vulnerabilities found" and exits 0 when it could audit *nothing* (every package skipped as "not found"),
# so this script counts the skipped packages and fails instead.
#
# Allow-list: scripts/audit_allowlist.txt, one vulnerability id per line followed by `#` and why it does not
# affect Q4 (and when to look again); see docs/reliability.md "Scanning".
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_AUDIT_VERSION="${PIP_AUDIT_VERSION:-2.10.1}"
AUDIT_SERVICE="${AUDIT_SERVICE:-pypi}"
ALLOWLIST="scripts/audit_allowlist.txt"

work="$(mktemp -d "${TMPDIR:-/tmp}/q4-audit.XXXXXX")"
trap 'rm -rf "$work"' EXIT

uv export --frozen --all-groups --all-extras --no-emit-project --no-header \
    --format requirements.txt --output-file "$work/requirements.txt" >/dev/null

ignore_args=()
if [ -f "$ALLOWLIST" ]; then
    while read -r id _; do
        case "$id" in "" | "#"*) continue ;; esac
        ignore_args+=(--ignore-vuln "$id")
    done <"$ALLOWLIST"
fi

set +e
uv tool run --from "pip-audit==${PIP_AUDIT_VERSION}" pip-audit \
    --disable-pip --require-hashes --requirement "$work/requirements.txt" \
    --vulnerability-service "$AUDIT_SERVICE" --progress-spinner off \
    --format json --output "$work/audit.json" ${ignore_args[@]+"${ignore_args[@]}"} 2>"$work/stderr"
status=$?
set -e

if [ ! -s "$work/audit.json" ]; then
    echo "audit_deps: pip-audit produced no report (exit $status); the audit was NOT done:" >&2
    tail -n 20 "$work/stderr" >&2
    exit 2
fi

uv run --frozen python - "$work/audit.json" "$status" "$AUDIT_SERVICE" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
status, service = int(sys.argv[2]), sys.argv[3]
deps = report.get("dependencies", [])
skipped = [d for d in deps if d.get("skip_reason")]
found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
audited = len(deps) - len(skipped)
print(f"audit_deps: {len(deps)} locked packages, {audited} audited against {service}, "
      f"{len(skipped)} not audited, {len(found)} known vulnerabilities not allow-listed")
for name, version, vuln in found:
    fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
    aliases = ", ".join(vuln.get("aliases") or [])
    print(f"  {name} {version}: {vuln['id']} ({aliases}) fixed in {fixes}")
if skipped:
    for dep in skipped[:10]:
        print(f"  not audited: {dep['skip_reason']}", file=sys.stderr)
    print(f"audit_deps: {len(skipped)} of {len(deps)} packages could not be audited (is {service}'s "
          "vulnerability API reachable from here?); the audit is NOT clean.", file=sys.stderr)
    sys.exit(2)
if found:
    print("audit_deps: upgrade the packages above (uv lock --upgrade-package NAME) or explain each id in "
          "scripts/audit_allowlist.txt.", file=sys.stderr)
    sys.exit(1)
if status != 0:
    print(f"audit_deps: pip-audit exited {status} without findings; see its output.", file=sys.stderr)
    sys.exit(2)
print("audit_deps: ok")
PY
