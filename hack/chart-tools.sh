#!/usr/bin/env bash
# Build helm and promtool at pinned releases and print the directory holding them.
#
# The chart under deploy/helm/ is linted, rendered and installed with the real helm, and the alert
# rules are unit-tested with the real promtool. Neither ships in a Debian package at a usable
# release, so both build from their published Go modules, like the Kubernetes binaries
# (hack/k8s-assets.sh): a throwaway module requires helm.sh/helm/v3 and
# github.com/prometheus/prometheus at the pinned releases (neither go.mod has `replace`
# directives) and `go build`s cmd/helm and cmd/promtool with the version information their own
# release builds stamp in.
#
# Usage:
#   hack/chart-tools.sh              build if needed, then print the directory
#   hack/chart-tools.sh --print-dir  only print the directory (never builds)
#
# The directory is ${MODELCAR_ASSETS_CACHE:-$HOME/.cache/modelcar-prefetcher}/chart-tools-<versions>/.
# A stamp file records what was built; when it matches and both binaries are present, the script
# exits without touching Go. A lock makes a second concurrent run wait for the first. Progress goes
# to stderr, the path alone to stdout.
set -euo pipefail

readonly HELM_VERSION="v3.19.5"
# Prometheus v3.7.3: its Go module carries the v0.<minor*100+patch> numbering.
readonly PROMETHEUS_VERSION="v0.307.3"
readonly PROMETHEUS_RELEASE="3.7.3"
readonly BINARIES=(helm promtool)
readonly STAMP_CONTENT="helm=${HELM_VERSION} prometheus=${PROMETHEUS_VERSION} cgo=0 trimpath"

readonly CACHE_ROOT="${MODELCAR_ASSETS_CACHE:-${HOME}/.cache/modelcar-prefetcher}"
readonly ASSETS_DIR="${CACHE_ROOT}/chart-tools-helm${HELM_VERSION#v}-prometheus${PROMETHEUS_RELEASE}"
readonly STAMP_FILE="${ASSETS_DIR}/.stamp"

log() { printf 'chart-tools: %s\n' "$*" >&2; }
die() { printf 'chart-tools: ERROR: %s\n' "$*" >&2; exit 1; }

is_complete() {
  [[ -f "${STAMP_FILE}" && "$(cat "${STAMP_FILE}")" == "${STAMP_CONTENT}" ]] || return 1
  local bin
  for bin in "${BINARIES[@]}"; do
    [[ -x "${ASSETS_DIR}/${bin}" ]] || return 1
  done
}

case "${1:-}" in
  "") ;;
  --print-dir) printf '%s\n' "${ASSETS_DIR}"; exit 0 ;;
  -h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (expected nothing or --print-dir)" ;;
esac

if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

GO="${GO:-$(command -v go || true)}"
[[ -z "${GO}" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "${GO}" ]] || die "no Go toolchain found: install Go >= 1.24 or set GO=/path/to/go"

mkdir -p "${ASSETS_DIR}"
exec 9>"${ASSETS_DIR}.lock"
flock 9
if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/chart-tools.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
rm -f "${STAMP_FILE}"

# module_dir NAME MODULE VERSION PACKAGE: a throwaway module that requires MODULE and imports
# PACKAGE (so `go mod tidy` pulls exactly its dependencies); prints the module's source directory.
module_dir() {
  local name="$1" module="$2" version="$3" package="$4" dir="${WORK}/$1" info src
  mkdir -p "${dir}"
  printf 'module modelcar-prefetcher/%s\n\ngo 1.24.0\n' "${name}" > "${dir}/go.mod"
  info="$(cd "${dir}" && "${GO}" mod download -json "${module}@${version}")" \
    || die "cannot download ${module}@${version} from the Go module proxy"
  src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"${info}")"
  [[ -f "${src}/go.mod" ]] || die "go mod download gave no source tree for ${module}@${version}"
  grep -q '^replace' "${src}/go.mod" && die "${module}@${version} has replace directives; copy them"
  {
    printf 'module modelcar-prefetcher/%s\n\n' "${name}"
    grep -m1 '^go ' "${src}/go.mod"
    printf '\nrequire %s %s\n' "${module}" "${version}"
  } > "${dir}/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "${package}" > "${dir}/tools.go"
  (cd "${dir}" && "${GO}" mod tidy >&2) || die "go mod tidy failed in ${dir}; see the output above"
  printf '%s\n' "${src}"
}

# go_build MODULE_DIR NAME PACKAGE LDFLAGS: build one binary and move it into place atomically.
go_build() {
  local dir="$1" name="$2" pkg="$3" ldflags="$4" start=${SECONDS}
  log "building ${name} (${pkg})"
  (cd "${dir}" && "${GO}" build -trimpath -ldflags="-s -w ${ldflags}" \
    -o "${ASSETS_DIR}/.${name}.tmp" "${pkg}") \
    || die "go build of ${pkg} failed (module in ${dir}); see the compiler output above"
  mv -f "${ASSETS_DIR}/.${name}.tmp" "${ASSETS_DIR}/${name}"
  log "built ${name} in $((SECONDS - start))s"
}

build_helm() {
  local src client minor major flags v=helm.sh/helm/v3
  log "resolving helm.sh/helm/v3 ${HELM_VERSION}"
  src="$(module_dir helm helm.sh/helm/v3 "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm)"
  # The Kubernetes version helm assumes without a cluster (helm template, lint): its client-go's,
  # as helm's Makefile stamps it.
  client="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${src}/go.mod")"
  [[ "${client}" =~ ^v0\.([0-9]+)\. ]] || die "cannot read k8s.io/client-go's version from helm's go.mod"
  minor="${BASH_REMATCH[1]}" major=1
  flags="-X ${v}/internal/version.version=${HELM_VERSION} -X ${v}/internal/version.gitTreeState=clean"
  flags+=" -X ${v}/pkg/lint/rules.k8sVersionMajor=${major} -X ${v}/pkg/lint/rules.k8sVersionMinor=${minor}"
  flags+=" -X ${v}/pkg/chartutil.k8sVersionMajor=${major} -X ${v}/pkg/chartutil.k8sVersionMinor=${minor}"
  go_build "${WORK}/helm" helm helm.sh/helm/v3/cmd/helm "${flags}"
}

build_promtool() {
  local flags p=github.com/prometheus/common/version
  log "resolving github.com/prometheus/prometheus ${PROMETHEUS_VERSION}"
  module_dir promtool github.com/prometheus/prometheus "${PROMETHEUS_VERSION}" \
    github.com/prometheus/prometheus/cmd/promtool >/dev/null
  flags="-X ${p}.Version=${PROMETHEUS_RELEASE} -X ${p}.Branch=release-${PROMETHEUS_RELEASE%.*}"
  go_build "${WORK}/promtool" promtool github.com/prometheus/prometheus/cmd/promtool "${flags}"
}

log "building helm ${HELM_VERSION} and promtool ${PROMETHEUS_RELEASE} into ${ASSETS_DIR}"
log "this takes several minutes on a cold Go build cache"
build_helm
build_promtool
"${ASSETS_DIR}/helm" version --short >&2 || die "built helm does not run"
"${ASSETS_DIR}/promtool" --version >&2 || die "built promtool does not run"
printf '%s\n' "${STAMP_CONTENT}" > "${STAMP_FILE}"
log "done"
printf '%s\n' "${ASSETS_DIR}"
