#!/usr/bin/env bash
# Build the Q4 task image (fargate/Dockerfile) from the repository root, and optionally push it.
#
#   scripts/build_image.sh [--tag REF] [--push]
#
#   --tag REF   the image reference to build (default: localhost/q4-task:git-<short sha>[-dirty]).
#   --push      push REF after building (e.g. REF=<account>.dkr.ecr.<region>.amazonaws.com/q4-task:git-abc;
#               log in to the registry first, as scripts/deploy.sh does). A stand-in base is never pushed.
#
# Engine: docker when `docker info` answers, otherwise buildah (installed from Debian's packages with apt-get
# when missing and this runs as root). Q4_IMAGE_ENGINE=docker|buildah forces one.
#
# Base: BASE_IMAGE (default python:3.12-slim, the production base). When it cannot be pulled (no registry
# reachable) the script builds a STAND-IN base from Debian packages (python3 + venv + pip, via mmdebstrap,
# suite STANDIN_SUITE, default bookworm) named localhost/q4-base-standin:<suite>, says so loudly, and builds
# the same Dockerfile on it: every step after FROM runs unchanged. Q4_NO_STANDIN=1 fails instead.
#
# Everything but the last line goes to stderr; the last line (stdout) is the image reference, so
#   ref="$(scripts/build_image.sh)"
# captures it.
set -euo pipefail
cd "$(dirname "$0")/.."

PRODUCTION_BASE="python:3.12-slim"
BASE_IMAGE="${BASE_IMAGE:-$PRODUCTION_BASE}"
STANDIN_SUITE="${STANDIN_SUITE:-bookworm}"
STANDIN_IMAGE="localhost/q4-base-standin:$STANDIN_SUITE"
REF=""
PUSH=0

say() { printf '== build_image: %s\n' "$*" >&2; }
die() { printf 'build_image: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) [ $# -ge 2 ] || die "--tag needs an image reference"; REF="$2"; shift 2 ;;
        --push) PUSH=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [ -z "$REF" ]; then
    REF="localhost/q4-task:git-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git status --porcelain -- fargate contract orchestrator pyproject.toml uv.lock README.md \
        .dockerignore 2>/dev/null)" ]; then
        REF="${REF}-dirty"
    fi
fi

apt_install() {
    [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
        || die "$* is not installed and cannot be installed here (needs root and apt-get); install it and retry."
    say "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; }
}

pick_engine() {
    case "${Q4_IMAGE_ENGINE:-}" in
        docker|buildah) ENGINE="$Q4_IMAGE_ENGINE" ;;
        "") if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
                ENGINE=docker
            else
                ENGINE=buildah
            fi ;;
        *) die "Q4_IMAGE_ENGINE must be docker or buildah, not '$Q4_IMAGE_ENGINE'" ;;
    esac
    if [ "$ENGINE" = buildah ] && ! command -v buildah >/dev/null 2>&1; then
        say "no docker engine answers; using buildah"
        apt_install buildah
    fi
    say "engine: $ENGINE ($("$ENGINE" --version 2>/dev/null | head -1))"
}

have_image() {
    if [ "$ENGINE" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
    else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

pull_image() {
    if [ "$ENGINE" = docker ]; then timeout 300 docker pull --quiet "$1" >&2
    else timeout 300 buildah pull --quiet "$1" >&2; fi
}

loud() {
    {
        printf '\n'
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf '!!! %s\n' "$@"
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
    } >&2
}

# The stand-in: Debian's python3 with venv and pip, the build machine's extra CA certificates (so pip and uv
# reach PyPI through the same TLS proxy the machine uses), pip allowed to install system-wide like in
# python:3.12-slim. Only its Python version (Debian's) differs from the production base.
build_standin() {
    command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
    local tar
    STANDIN_TMP="$(mktemp -d)"
    trap 'rm -rf "$STANDIN_TMP"' EXIT
    tar="$STANDIN_TMP/base.tar"
    say "building the stand-in base $STANDIN_IMAGE with mmdebstrap ($STANDIN_SUITE)"
    # shellcheck disable=SC2016  # the hooks are run by mmdebstrap's shell with the chroot as $1
    mmdebstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
            cp /usr/local/share/ca-certificates/*.crt "$1"/usr/local/share/ca-certificates/
            chroot "$1" update-ca-certificates >/dev/null; fi' \
        "$STANDIN_SUITE" "$tar" >&2
    if [ "$ENGINE" = docker ]; then
        docker import --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$STANDIN_IMAGE" >&2
    else
        local ctr
        ctr="$(buildah from scratch)"
        buildah add --quiet "$ctr" "$tar" / >&2
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
            --cmd '["python3"]' "$ctr" >&2
        buildah commit --quiet "$ctr" "$STANDIN_IMAGE" >&2
        buildah rm "$ctr" >/dev/null
    fi
    rm -rf "$STANDIN_TMP"
}

pick_base() {
    BASE="$BASE_IMAGE"
    STANDIN=0
    if have_image "$BASE" || pull_image "$BASE"; then
        say "base: $BASE"
        return
    fi
    [ "$BASE" = "$PRODUCTION_BASE" ] && [ "${Q4_NO_STANDIN:-0}" != "1" ] \
        || die "the base image $BASE cannot be pulled"
    STANDIN=1
    BASE="$STANDIN_IMAGE"
    have_image "$BASE" || build_standin
    local python
    python="$(image_python_version 2>/dev/null || true)"
    loud "STAND-IN BASE: $PRODUCTION_BASE cannot be pulled here (no image registry reachable)." \
        "Building on $BASE instead: Debian $STANDIN_SUITE packages, Python ${python:-(version unknown)}, not 3.12." \
        "Every Dockerfile step after FROM runs unchanged; this image is for local checks only, never push it."
}

image_python_version() {
    if [ "$ENGINE" = docker ]; then
        docker run --rm --entrypoint python3 "$BASE" -c 'import sys; print(sys.version.split()[0])'
    else
        local ctr
        ctr="$(buildah from --quiet "$BASE")"
        buildah run --isolation chroot "$ctr" python3 -c 'import sys; print(sys.version.split()[0])'
        buildah rm "$ctr" >/dev/null
    fi
}

pick_engine
pick_base
[ "$PUSH" = 1 ] && [ "$STANDIN" = 1 ] && die "refusing to push $REF: it would be built on the stand-in base $BASE"

say "building $REF from fargate/Dockerfile (BASE_IMAGE=$BASE)"
if [ "$ENGINE" = docker ]; then
    docker build --platform linux/amd64 --build-arg "BASE_IMAGE=$BASE" -f fargate/Dockerfile -t "$REF" . >&2
else
    buildah build --isolation chroot --layers --platform linux/amd64 --build-arg "BASE_IMAGE=$BASE" \
        -f fargate/Dockerfile -t "$REF" . >&2
fi
[ "$STANDIN" = 1 ] && loud "$REF is built on the STAND-IN base $BASE (not $PRODUCTION_BASE)."

if [ "$PUSH" = 1 ]; then
    say "pushing $REF"
    if [ "$ENGINE" = docker ]; then docker push "$REF" >&2; else buildah push "$REF" >&2; fi
fi
printf '%s\n' "$REF"
