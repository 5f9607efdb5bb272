#!/usr/bin/env bash
# Build the orchestrator Lambda zip (orchestrator/q4_orchestrator + the `lambda` dependency group of
# pyproject.toml, pinned by uv.lock) reproducibly: build/orchestrator.zip unless a path is given.
#   scripts/build_lambda_zip.sh [OUT.zip]
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv run python -m q4_deploy.lambda_zip --out "${1:-build/orchestrator.zip}"
