#!/usr/bin/env bash
# Deploy the Q4 control plane once: build the Lambda zip, terraform apply infrastructure/, build and push the
# task image to the stack's ECR repository (with scripts/build_image.sh --push, on python:3.12-slim).
#
#   scripts/deploy.sh [terraform apply options...]      e.g. -var region=eu-west-1 -var-file=prod.tfvars
#
# Environment:
#   IMAGE_TAG       tag of the task image (default: git-<short sha>, plus -dirty-<time> for uncommitted trees);
#                   ECR tags are immutable, so every build gets a new tag.
#   SKIP_IMAGE=1    do not build or push the image (then set IMAGE_TAG to a tag already in the repository).
#   AWS_ENDPOINT_URL  deploy to an emulator instead (docker-compose's moto or LocalStack): Terraform runs in a
#                   copy under build/emulator-terraform with the endpoint override; no image is pushed.
#   AUTO_APPROVE=0  let terraform ask before applying (default: apply without asking).
#   Q4_BUILD_DIR    where the zip, the CLI config and the emulator copy go (default: build/).
# Credentials and region come from the usual AWS chain (AWS_PROFILE, AWS_REGION, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BUILD="${Q4_BUILD_DIR:-$ROOT/build}"

say() { printf '== %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

command -v terraform >/dev/null 2>&1 || die "terraform is not on PATH; install Terraform >= 1.6 and try again."
command -v uv >/dev/null 2>&1 || die "uv is not on PATH; install uv (https://docs.astral.sh/uv/) and try again."

if [ -z "${IMAGE_TAG:-}" ]; then
    IMAGE_TAG="git-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git status --porcelain -- fargate contract pyproject.toml uv.lock README.md 2>/dev/null)" ]; then
        IMAGE_TAG="${IMAGE_TAG}-dirty-$(date -u +%Y%m%d%H%M%S)"
    fi
fi

docker_ready() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
if [ -z "${AWS_ENDPOINT_URL:-}" ] && [ "${SKIP_IMAGE:-}" != "1" ] && ! docker_ready; then
    die "no docker engine answers; start Docker, or set SKIP_IMAGE=1 with IMAGE_TAG=<a tag already in ECR>."
fi

say "building the orchestrator zip"
ZIP="$BUILD/orchestrator.zip"
scripts/build_lambda_zip.sh "$ZIP"

if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    WORKDIR="$BUILD/emulator-terraform"
    say "terraform against the emulator at $AWS_ENDPOINT_URL (in $WORKDIR)"
    uv run python -m q4_deploy.terraform copy "$WORKDIR" "$AWS_ENDPOINT_URL"
    SKIP_IMAGE=1
    # Later -var arguments (yours) win over these.
    EXTRA_VARS=(-var force_destroy=true -var event_source_mapping_enabled=false -var restrict_dlq_sources=false)
else
    WORKDIR="$ROOT/infrastructure"
    EXTRA_VARS=()
fi
# Offline machines keep the AWS provider in a filesystem mirror: use it when there is one.
eval "$(uv run python -m q4_deploy.terraform cli-config "$BUILD/terraform-cli")"
if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -f "$TF_CLI_CONFIG_FILE" ]; then unset TF_CLI_CONFIG_FILE; fi

APPROVE=(-auto-approve)
[ "${AUTO_APPROVE:-1}" = "0" ] && APPROVE=()

say "terraform init"
terraform -chdir="$WORKDIR" init -input=false

repository_url() { terraform -chdir="$WORKDIR" output -raw ecr_repository_url 2>/dev/null || true; }


push_image() {
    local repo="$1" registry="${1%%/*}" region
    region="$(terraform -chdir="$WORKDIR" output -raw region)"
    say "building and pushing $repo:$IMAGE_TAG"
    local aws_cli=(aws)
    command -v aws >/dev/null 2>&1 || aws_cli=(uv run aws)
    "${aws_cli[@]}" ecr get-login-password --region "$region" \
        | docker login --username AWS --password-stdin "$registry"
    # The same script as local builds; here with the engine just logged in, the production base only
    # (no stand-in), for linux/amd64, and pushed.
    Q4_IMAGE_ENGINE=docker Q4_NO_STANDIN=1 scripts/build_image.sh --tag "$repo:$IMAGE_TAG" --push >/dev/null
}

# Push before the apply when the repository already exists, so the new task definition never names a
# missing image; on the first deployment the repository only exists after the apply.
REPO="$(repository_url)"
PUSHED=0
if [ "${SKIP_IMAGE:-}" != "1" ] && [ -n "$REPO" ]; then
    push_image "$REPO"
    PUSHED=1
fi

say "terraform apply (image tag $IMAGE_TAG)"
terraform -chdir="$WORKDIR" apply -input=false "${APPROVE[@]}" \
    -var "lambda_zip_path=$ZIP" -var "image_tag=$IMAGE_TAG" "${EXTRA_VARS[@]}" "$@"

if [ "${SKIP_IMAGE:-}" != "1" ] && [ "$PUSHED" = "0" ]; then
    push_image "$(repository_url)"
fi

say "deployed"
terraform -chdir="$WORKDIR" output
