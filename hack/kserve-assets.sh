#!/usr/bin/env bash
# Build KServe's controller manager at a pinned release, copy its manifests, and print the directory.
#
# KServe is the system this project must interoperate with, so the integration tests run its real
# controller and webhooks rather than a CRD stub. The manager builds from the published Go module:
# a throwaway module requires github.com/kserve/kserve at the pinned release and copies the
# `replace` directives of KServe's own go.mod, which never propagate to a dependent module. The
# CRDs, the inferenceservice-config ConfigMap and the webhook configurations are copied from the
# same module version, so nothing KServe ships is written by hand here.
#
# Usage:
#   hack/kserve-assets.sh              build if needed, then print the directory
#   hack/kserve-assets.sh --print-dir  only print the directory (never builds)
#
# The directory is ${MODELCAR_ASSETS_CACHE:-$HOME/.cache/modelcar-prefetcher}/kserve-<version>/:
#   manager                      the controller manager binary (cmd/manager)
#   config/crd/full/...          CRDs, with the clusterstoragecontainer and localmodel subfolders
#   config/configmap/inferenceservice.yaml
#   config/webhook/manifests.yaml
# A stamp file records what was built; when it matches, the script exits without touching Go.
set -euo pipefail

readonly KSERVE_VERSION="v0.20.0"
readonly STAMP_CONTENT="kserve=${KSERVE_VERSION} cmd/manager cgo=0 trimpath"
readonly CACHE_ROOT="${MODELCAR_ASSETS_CACHE:-${HOME}/.cache/modelcar-prefetcher}"
readonly ASSETS_DIR="${CACHE_ROOT}/kserve-${KSERVE_VERSION#v}"
readonly STAMP_FILE="${ASSETS_DIR}/.stamp"
# What the tests read from KServe's config/ tree, copied verbatim.
readonly CONFIG_PATHS=(crd/full configmap/inferenceservice.yaml webhook/manifests.yaml)

log() { printf 'kserve-assets: %s\n' "$*" >&2; }
die() { printf 'kserve-assets: ERROR: %s\n' "$*" >&2; exit 1; }

is_complete() {
  [[ -f "${STAMP_FILE}" && "$(cat "${STAMP_FILE}")" == "${STAMP_CONTENT}" ]] || return 1
  [[ -x "${ASSETS_DIR}/manager" ]] || return 1
  local path
  for path in "${CONFIG_PATHS[@]}"; do
    [[ -e "${ASSETS_DIR}/config/${path}" ]] || return 1
  done
}

case "${1:-}" in
  "") ;;
  --print-dir) printf '%s\n' "${ASSETS_DIR}"; exit 0 ;;
  -h|--help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (expected nothing or --print-dir)" ;;
esac

if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

GO="${GO:-$(command -v go || true)}"
[[ -z "${GO}" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "${GO}" ]] || die "no Go toolchain found: install Go >= 1.25.8 or set GO=/path/to/go"

mkdir -p "${ASSETS_DIR}"
exec 9>"${ASSETS_DIR}.lock"
flock 9
if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kserve-assets.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
rm -f "${STAMP_FILE}"

log "resolving github.com/kserve/kserve ${KSERVE_VERSION}"
mkdir -p "${WORK}/kserve"
cd "${WORK}/kserve"
printf 'module modelcar-prefetcher/kserve-assets\n\ngo 1.25.8\n' > go.mod
info="$("${GO}" mod download -json "github.com/kserve/kserve@${KSERVE_VERSION}")" \
  || die "cannot download github.com/kserve/kserve@${KSERVE_VERSION} from the Go module proxy"
src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"${info}")"
[[ -f "${src}/go.mod" ]] || die "go mod download gave no source tree for kserve ${KSERVE_VERSION}"

# The module's go directive, its requirement and every replace directive of KServe's go.mod
# (single-line `replace a => b v` and the lines of `replace ( … )` blocks alike).
{
  printf 'module modelcar-prefetcher/kserve-assets\n\n'
  grep -m1 '^go ' "${src}/go.mod"
  printf '\nrequire github.com/kserve/kserve %s\n\nreplace (\n' "${KSERVE_VERSION}"
  awk '/^replace \(/ { inblock = 1; next }
       inblock && /^\)/ { inblock = 0; next }
       inblock && /=>/ { sub(/^[ \t]+/, ""); print "\t" $0; next }
       /^replace / && /=>/ { sub(/^replace[ \t]+/, ""); print "\t" $0 }' "${src}/go.mod"
  printf ')\n'
} > go.mod
grep -q 'k8s.io/api =>' go.mod || die "found no k8s.io replacements in ${src}/go.mod; its layout changed"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/kserve/kserve/cmd/manager"
GO

start=${SECONDS}
log "go mod tidy (downloads KServe's dependencies)"
"${GO}" mod tidy >&2 || die "go mod tidy failed in ${WORK}/kserve; see the output above"
log "building the controller manager (several minutes on a cold Go build cache)"
"${GO}" build -trimpath -ldflags="-s -w" -o "${ASSETS_DIR}/.manager.tmp" \
  github.com/kserve/kserve/cmd/manager \
  || die "go build of github.com/kserve/kserve/cmd/manager failed; see the compiler output above"
mv -f "${ASSETS_DIR}/.manager.tmp" "${ASSETS_DIR}/manager"
log "built manager in $((SECONDS - start))s"

rm -rf "${ASSETS_DIR}/config"
for path in "${CONFIG_PATHS[@]}"; do
  mkdir -p "${ASSETS_DIR}/config/$(dirname "${path}")"
  cp -R "${src}/config/${path}" "${ASSETS_DIR}/config/${path}"
done
chmod -R u+w "${ASSETS_DIR}/config"
"${ASSETS_DIR}/manager" --help >/dev/null 2>&1 || die "built manager does not run"
printf '%s\n' "${STAMP_CONTENT}" > "${STAMP_FILE}"
log "done"
printf '%s\n' "${ASSETS_DIR}"
