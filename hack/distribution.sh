#!/usr/bin/env bash
# Build the CNCF Distribution registry v3 at a pinned release and print the directory holding it.
#
# Debian ships Distribution 2.8 as `docker-registry`. As a pull-through cache, 2.8 fetches a blob
# it lacks from the origin twice (once streamed to the client, once to store); Distribution 3
# stores what it streams (distribution/distribution#3569). The fleet benchmark runs both as the
# nodes' mirror. Nothing else ships v3 here, so it builds from its published Go module, like the
# Kubernetes binaries (hack/k8s-assets.sh): `go install` of cmd/registry at the pinned release
# (its go.mod has no `replace` directives), with the version its release builds stamp in.
#
# Usage:
#   hack/distribution.sh              build if needed, then print the directory
#   hack/distribution.sh --print-dir  only print the directory (never builds)
#
# The directory is ${MODELCAR_ASSETS_CACHE:-$HOME/.cache/modelcar-prefetcher}/distribution-<version>/
# and holds `registry`. A stamp file records what was built; a lock makes a second concurrent run
# wait for the first. Progress goes to stderr, the path alone to stdout.
set -euo pipefail

readonly VERSION="v3.0.0"
readonly MODULE="github.com/distribution/distribution/v3"
readonly STAMP_CONTENT="distribution=${VERSION} cgo=0 trimpath"
readonly CACHE_ROOT="${MODELCAR_ASSETS_CACHE:-${HOME}/.cache/modelcar-prefetcher}"
readonly ASSETS_DIR="${CACHE_ROOT}/distribution-${VERSION#v}"
readonly STAMP_FILE="${ASSETS_DIR}/.stamp"

log() { printf 'distribution: %s\n' "$*" >&2; }
die() { printf 'distribution: ERROR: %s\n' "$*" >&2; exit 1; }

is_complete() {
  [[ -f "${STAMP_FILE}" && "$(cat "${STAMP_FILE}")" == "${STAMP_CONTENT}" && -x "${ASSETS_DIR}/registry" ]]
}

case "${1:-}" in
  "") ;;
  --print-dir) printf '%s\n' "${ASSETS_DIR}"; exit 0 ;;
  -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (expected nothing or --print-dir)" ;;
esac

if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

GO="${GO:-$(command -v go || true)}"
[[ -z "${GO}" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "${GO}" ]] || die "no Go toolchain found: install Go >= 1.23 or set GO=/path/to/go"

mkdir -p "${ASSETS_DIR}"
exec 9>"${ASSETS_DIR}.lock"
flock 9
if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="${ASSETS_DIR}"
rm -f "${STAMP_FILE}"
start=${SECONDS}
log "building ${MODULE}/cmd/registry ${VERSION} into ${ASSETS_DIR} (minutes on a cold Go build cache)"
"${GO}" install -trimpath -ldflags="-s -w -X ${MODULE}/version.version=${VERSION}" \
  "${MODULE}/cmd/registry@${VERSION}" || die "go install of ${MODULE}/cmd/registry@${VERSION} failed"
"${ASSETS_DIR}/registry" --version >&2 || die "the built registry does not run"
printf '%s\n' "${STAMP_CONTENT}" > "${STAMP_FILE}"
log "built in $((SECONDS - start))s"
printf '%s\n' "${ASSETS_DIR}"
