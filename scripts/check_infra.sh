#!/usr/bin/env bash
# Static checks of infrastructure/: terraform fmt, terraform validate (in a throw-away copy, with the local
# provider mirror when there is one) and checkov (every failed check must be skipped in the code with a reason).
#   scripts/check_infra.sh            all three
#   CHECKOV=0 scripts/check_infra.sh  skip checkov (e.g. offline without a cached checkov)
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"

if ! command -v terraform >/dev/null 2>&1; then
    echo "check_infra: terraform is not on PATH; install Terraform >= 1.6 and try again." >&2
    exit 1
fi

echo "== terraform fmt"
TF_CLI_CONFIG_FILE=/dev/null terraform fmt -check -recursive -diff infrastructure

echo "== terraform validate"
uv run python - <<'PY'
import tempfile
from pathlib import Path

from q4.errors import Q4Error
from q4_deploy import terraform as tf

with tempfile.TemporaryDirectory(prefix="q4-validate-") as tmp:
    workdir = tf.copy_module(Path(tmp) / "infrastructure")
    env = tf.terraform_env(workdir)
    try:
        tf.init(workdir, env)
        report = tf.validate(workdir, env)
    except Q4Error as exc:
        raise SystemExit(f"check_infra: {exc.message}") from None
    print(f"valid ({report['warning_count']} warnings)")
    if report["warning_count"]:
        raise SystemExit("check_infra: terraform validate reported warnings; fix them.")
PY

if [ "${CHECKOV:-1}" != "0" ]; then
    echo "== checkov ${CHECKOV_VERSION}"
    uv tool run --from "checkov==${CHECKOV_VERSION}" checkov \
        --directory infrastructure --framework terraform --compact --quiet --skip-download
fi
echo "check_infra: ok"
