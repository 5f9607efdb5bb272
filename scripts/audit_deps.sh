#!/usr/bin/env bash
# Audit the locked Python dependencies (uv.lock) for known vulnerabilities with `uv audit`.
#
#   scripts/audit_deps.sh                                  online: api.osv.dev (uv's default OSV service)
#   Q4_OSV_URL=https://osv.example.org scripts/audit_deps.sh   another OSV-compatible service
#   Q4_OSV_DB=/path/to/osv-records scripts/audit_deps.sh   offline: a local OSV server (scripts/osv_mirror.py)
#                                                          over a directory of OSV records (JSON, or YAML
#                                                          such as the PyPA advisory database)
#
# `uv audit --frozen` reads uv.lock itself (nothing re-resolved) and, by default, audits every package of the
# lock: the default dependencies, every extra and every dependency group (dev and lambda), whatever
# `tool.uv.default-groups` says. It sends one POST /v1/querybatch with every locked (name, version) and then
# GET /v1/vulns/<id> for each hit. It also asks the package index for PEP 792 project statuses
# (quarantined, deprecated, ...); uv treats that part as best effort and says nothing when the index is
# unreachable.
#
# Exit codes: 0 every locked package was audited and every finding is in the allow-list;
# 1 a known vulnerability (or an adverse project status) that is not allow-listed;
# 2 the audit could not be done (service unreachable, uv without `uv audit`, fewer packages audited than
# uv.lock holds, a report that cannot be read). "ok" is printed only with exit 0.
#
# Allow-list: scripts/audit_allowlist.txt (Q4_AUDIT_ALLOWLIST overrides the path), one vulnerability id per
# line followed by `#` and why it does not affect Q4; each id goes to `uv audit --ignore`, which also
# matches the advisory's aliases (a CVE id ignores the PYSEC/GHSA record that lists it).
set -euo pipefail
cd "$(dirname "$0")/.."

TESTED_UV="0.13.9"
ALLOWLIST="${Q4_AUDIT_ALLOWLIST:-scripts/audit_allowlist.txt}"
OSV_URL="${Q4_OSV_URL:-}"
OSV_DB="${Q4_OSV_DB:-}"

die2() { echo "audit_deps: $*; the audit was NOT done." >&2; exit 2; }

command -v uv >/dev/null 2>&1 || die2 "uv is not installed (need uv >= ${TESTED_UV}, the version this script is tested with)"
if ! uv audit --help >/dev/null 2>&1; then
    die2 "$(uv --version) has no \`uv audit\` command; install uv >= ${TESTED_UV} (pip install -U 'uv>=${TESTED_UV}')"
fi
if [ -n "$OSV_URL" ] && [ -n "$OSV_DB" ]; then die2 "set Q4_OSV_URL or Q4_OSV_DB, not both"; fi
[ -f uv.lock ] || die2 "no uv.lock"
[ -f "$ALLOWLIST" ] || die2 "allow-list $ALLOWLIST not found"

work="$(mktemp -d "${TMPDIR:-/tmp}/q4-audit.XXXXXX")"
mirror_pid=""
cleanup() {
    if [ -n "$mirror_pid" ]; then kill "$mirror_pid" 2>/dev/null || true; wait "$mirror_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The project's interpreter (packaging, and PyYAML for YAML records, come from uv.lock).
py="$(uv run --frozen python -c 'import sys; print(sys.executable)')" || die2 "uv run --frozen python failed"

service="api.osv.dev (uv's default)"
service_args=()
if [ -n "$OSV_DB" ]; then
    [ -d "$OSV_DB" ] || die2 "Q4_OSV_DB=$OSV_DB is not a directory"
    "$py" scripts/osv_mirror.py "$OSV_DB" --port-file "$work/port" 2>"$work/mirror.log" &
    mirror_pid=$!
    for _ in $(seq 1 300); do
        [ -s "$work/port" ] && break
        kill -0 "$mirror_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -s "$work/port" ]; then
        cat "$work/mirror.log" >&2
        die2 "the local OSV server over $OSV_DB did not start"
    fi
    OSV_URL="http://127.0.0.1:$(cat "$work/port")"
    head -n 1 "$work/mirror.log" >&2
    grep -v '^osv_mirror: [0-9]* records' "$work/mirror.log" >&2 || true
    service="a local OSV server over $OSV_DB"
elif [ -n "$OSV_URL" ]; then
    service="$OSV_URL"
fi
if [ -n "$OSV_URL" ]; then service_args=(--service-url "$OSV_URL"); fi

ignore_args=()
allowed=0
while read -r id _; do
    case "$id" in "" | "#"*) continue ;; esac
    ignore_args+=(--ignore "$id")
    allowed=$((allowed + 1))
done <"$ALLOWLIST"

set +e
uv audit --frozen --no-progress --color never \
    --preview-features audit-command --preview-features json-output --output-format json \
    ${service_args[@]+"${service_args[@]}"} ${ignore_args[@]+"${ignore_args[@]}"} \
    >"$work/audit.json" 2>"$work/stderr"
status=$?
set -e

if [ "$status" -gt 1 ] || [ ! -s "$work/audit.json" ]; then
    tail -n 20 "$work/stderr" >&2
    die2 "uv audit exited $status against $service"
fi

"$py" - "$work/audit.json" "$status" "$service" "$ALLOWLIST" "$allowed" <<'PY'
import json
import sys
import tomllib

path, status, service, allowlist, allowed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
try:
    report = json.load(open(path))
    summary = report["summary"]
    audited = int(summary["audited_packages"])
    vulns = report["vulnerabilities"]
    statuses = report.get("adverse_statuses", [])
except (ValueError, KeyError, TypeError) as exc:
    print(f"audit_deps: cannot read uv audit's JSON report ({exc!r}); the audit was NOT done.", file=sys.stderr)
    sys.exit(2)
lock = tomllib.load(open("uv.lock", "rb"))
# Every [[package]] except the project itself (editable / virtual workspace members are not on any index).
locked = [p for p in lock["package"] if not {"editable", "virtual"} & set(p.get("source", {}))]
print(f"audit_deps: {audited} of {len(locked)} locked packages audited against {service}; "
      f"{len(vulns)} known vulnerabilities and {len(statuses)} adverse project statuses not allow-listed "
      f"({allowed} ids in {allowlist})")
if audited < len(locked):
    print(f"audit_deps: uv audited {audited} packages but uv.lock holds {len(locked)}; the audit is "
          "incomplete, NOT clean.", file=sys.stderr)
    sys.exit(2)
for vuln in vulns:
    dep = vuln.get("dependency", {})
    aliases = ", ".join(vuln.get("aliases") or []) or "no aliases"
    fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
    print(f"  {dep.get('name')} {dep.get('version')}: {vuln.get('id')} ({aliases}), fixed in {fixes}"
          f"{' - ' + vuln['summary'] if vuln.get('summary') else ''}"
          f"{' - ' + vuln['link'] if vuln.get('link') else ''}")
for adverse in statuses:
    print(f"  adverse project status: {json.dumps(adverse, sort_keys=True)}")
if vulns or statuses:
    print("audit_deps: upgrade each package above to a fixed version (uv lock --upgrade-package NAME, then "
          f"run the tests), or, if Q4 is not affected, add the id to {allowlist} with the reason.",
          file=sys.stderr)
    sys.exit(1)
if status != 0:
    print(f"audit_deps: uv audit exited {status} without findings in its report; NOT clean.", file=sys.stderr)
    sys.exit(2)
print("audit_deps: ok")
PY
