#!/usr/bin/env bash
# Build an envtest-style directory of Kubernetes binaries for a pinned release and print its path.
#
# No distribution package ships kube-apiserver, so the binaries are built from the published Go
# modules: a throwaway module requires k8s.io/kubernetes at the pinned release and replaces each
# k8s.io/* staging module (which the kubernetes go.mod points at ./staging/...) with its matching
# v0.<minor>.<patch> release. etcd is built the same way from go.etcd.io/etcd/server/v3 at the
# release the pinned Kubernetes is tested against, in its own module so that its dependency
# versions are etcd's and not Kubernetes'.
#
# Usage:
#   hack/k8s-assets.sh              build if needed, then print the directory
#   hack/k8s-assets.sh --print-dir  only print the directory (never builds)
#
# The directory is ${MODELCAR_ASSETS_CACHE:-$HOME/.cache/modelcar-prefetcher}/k8s-<version>/ and
# can be used as KUBEBUILDER_ASSETS. A stamp file records what was built; when it matches and all
# binaries are present, the script exits without touching Go. Progress goes to stderr, the path
# alone to stdout.
set -euo pipefail

# v1.32.5 is the newest v1.32 patch whose staging modules are all on the module proxy this project
# builds from: for v1.32.6 and later, k8s.io/endpointslice, cri-client, csi-translation-lib,
# kube-scheduler or kube-controller-manager answer "403 This module version is not available".
# kubelet v1.32 still supports containerd 1.6 (Debian 12).
readonly KUBERNETES_VERSION="v1.32.5"
# The etcd release kubernetes v1.32 pins for its client and server (go.mod, cluster/images/etcd).
readonly ETCD_VERSION="v3.5.16"
readonly BINARIES=(etcd kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager)
readonly STAMP_CONTENT="kubernetes=${KUBERNETES_VERSION} etcd=${ETCD_VERSION} cgo=0 trimpath"

readonly CACHE_ROOT="${MODELCAR_ASSETS_CACHE:-${HOME}/.cache/modelcar-prefetcher}"
readonly ASSETS_DIR="${CACHE_ROOT}/k8s-${KUBERNETES_VERSION#v}"
readonly STAMP_FILE="${ASSETS_DIR}/.stamp"

log() { printf 'k8s-assets: %s\n' "$*" >&2; }
die() { printf 'k8s-assets: ERROR: %s\n' "$*" >&2; exit 1; }

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
  -h|--help) sed -n '2,19s/^# \{0,1\}//p' "$0"; exit 0 ;;
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
# Two concurrent runs would race on the same outputs; the second waits for the first.
exec 9>"${ASSETS_DIR}.lock"
flock 9
if is_complete; then
  printf '%s\n' "${ASSETS_DIR}"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/k8s-assets.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
rm -f "${STAMP_FILE}"

write_kubernetes_module() {
  local dir="$1" gomod minor
  log "resolving k8s.io/kubernetes ${KUBERNETES_VERSION}"
  mkdir -p "${dir}"
  gomod="$(cd "${dir}" && "${GO}" mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')" \
    || die "cannot download k8s.io/kubernetes@${KUBERNETES_VERSION} from the Go module proxy"
  [[ -f "${gomod}" ]] || die "go mod download gave no go.mod for k8s.io/kubernetes@${KUBERNETES_VERSION}"
  minor="${KUBERNETES_VERSION#v1.}"
  {
    printf 'module modelcar-prefetcher/k8s-assets\n\ngo 1.23.0\n\ngodebug default=go1.23\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "${KUBERNETES_VERSION}"
    # Every staging module kubernetes replaces with ./staging/src/k8s.io/<name>.
    awk -v v="v0.${minor}" \
      '$2 == "=>" && $3 ~ /^\.\/staging\/src\/k8s\.io\// { printf "\t%s => %s %s\n", $1, $1, v }' \
      "${gomod}"
    printf ')\n'
  } > "${dir}/go.mod"
  grep -q 'k8s.io/api =>' "${dir}/go.mod" \
    || die "found no staging replacements in ${gomod}; its layout changed"
}

write_etcd_module() {
  local dir="$1"
  mkdir -p "${dir}"
  printf 'module modelcar-prefetcher/etcd-assets\n\ngo 1.22\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "${ETCD_VERSION}" > "${dir}/go.mod"
}

# go_build MODULE_DIR NAME PACKAGE [LDFLAGS]: build one binary and move it into place atomically.
go_build() {
  local dir="$1" name="$2" pkg="$3" ldflags="${4:-}" start
  start=${SECONDS}
  log "building ${name} (${pkg})"
  (cd "${dir}" && "${GO}" build -trimpath -ldflags="-s -w ${ldflags}" \
    -o "${ASSETS_DIR}/.${name}.tmp" "${pkg}") \
    || die "go build of ${pkg} failed (module in ${dir}); see the compiler output above"
  mv -f "${ASSETS_DIR}/.${name}.tmp" "${ASSETS_DIR}/${name}"
  log "built ${name} in $((SECONDS - start))s"
}

kube_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}" flags="" pair key val pkg
  minor="${minor%%.*}"
  for pair in "gitVersion=${KUBERNETES_VERSION}" gitMajor=1 "gitMinor=${minor}" gitTreeState=clean; do
    key="${pair%%=*}" val="${pair#*=}"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      flags+=" -X ${pkg}.${key}=${val}"
    done
  done
  printf '%s' "${flags}"
}

build_all() {
  local kube="${WORK}/kubernetes" etcd="${WORK}/etcd" ldflags
  write_kubernetes_module "${kube}"
  write_etcd_module "${etcd}"
  ldflags="$(kube_ldflags)"
  # The API server, kubectl and etcd are what the test suite needs first.
  go_build "${kube}" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "${ldflags}"
  go_build "${kube}" kubectl k8s.io/kubernetes/cmd/kubectl "${ldflags}"
  go_build "${etcd}" etcd go.etcd.io/etcd/server/v3
  go_build "${kube}" kubelet k8s.io/kubernetes/cmd/kubelet "${ldflags}"
  go_build "${kube}" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "${ldflags}"
  go_build "${kube}" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager \
    "${ldflags}"
}

log "building Kubernetes ${KUBERNETES_VERSION} and etcd ${ETCD_VERSION} into ${ASSETS_DIR}"
log "this takes a long while on a cold Go build cache"
build_all
"${ASSETS_DIR}/kube-apiserver" --version >&2 || die "built kube-apiserver does not run"
"${ASSETS_DIR}/etcd" --version >&2 || die "built etcd does not run"
printf '%s\n' "${STAMP_CONTENT}" > "${STAMP_FILE}"
log "done"
printf '%s\n' "${ASSETS_DIR}"
