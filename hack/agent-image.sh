#!/usr/bin/env bash
# Build the agent's container image from the project's Dockerfile with buildah (no daemon), and
# optionally push it.
#
# Usage:
#   hack/agent-image.sh [--base-registry HOST:PORT] [--push REF] [--storage-driver overlay|vfs]
#                       [--ca-bundle FILE|none] [--refresh-base]
#
#   --base-registry HOST:PORT  push the Debian base there as library/debian:bookworm-slim and
#                              resolve the Dockerfile's `FROM debian:bookworm-slim` (docker.io)
#                              from it (plain HTTP or unverified TLS, no auth); without it the
#                              base is taken from local storage under that name, nothing pulled
#   --push REF                 push the image to REF (HOST:PORT/NAME:TAG; plain HTTP or TLS
#                              without verification, no auth) and print HOST:PORT/NAME@sha256:...
#                              on stdout; without it, print the image ID of the local
#                              localhost/modelcar-prefetcher:dev
#   --storage-driver DRIVER    containers-storage driver: overlay (default), or vfs for a cache
#                              directory on a filesystem overlayfs cannot use (slower, larger)
#   --ca-bundle FILE|none      CA bundle the build's pip trusts (say, with a TLS-intercepting
#                              proxy's CA), mounted for RUN steps only, not part of the image;
#                              default: the host's /etc/ssl/certs/ca-certificates.crt
#   --refresh-base             bootstrap the Debian base again (a cached one never expires)
#
# Needs root, buildah and mmdebstrap (Debian packages), and the Debian mirror and PyPI during the
# build: apt-get and pip run inside it. Progress goes to stderr, the result alone to stdout.
#
# The base stands in for Docker Hub's debian:bookworm-slim: a minimal root bootstrapped by
# mmdebstrap (minbase, merged /usr) from $DEBIAN_MIRROR and $DEBIAN_SECURITY_MIRROR (default:
# deb.debian.org), with the official image's dpkg excludes and apt settings, committed once as
# an image. Cached under
# ${MODELCAR_ASSETS_CACHE:-$HOME/.cache/modelcar-prefetcher}/:
#   debian-<suite>-<variant>-<arch>-<recipe>.tar  the bootstrapped root; <recipe> hashes how it
#                                                 is made, so changing that here rebuilds it
#   buildah/                                      containers-storage: the base image and the
#                                                 build's layer cache (`--layers`)
# The agent image is built from the working tree on every run; with unchanged inputs every step
# is a cache hit. A lock file serialises concurrent runs, which share the storage.
set -euo pipefail

readonly SUITE="bookworm"
readonly VARIANT="minbase"
# What the Dockerfile's FROM lines name, qualified the way the short name resolves.
readonly BASE_REPOSITORY="library/debian"
readonly BASE_TAG="bookworm-slim"
readonly LOCAL_IMAGE="localhost/modelcar-prefetcher:dev"
readonly MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
readonly SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# The official slim image's dpkg filter (debuerreotype --slim); kept for later apt-get installs.
readonly SLIM_EXCLUDES=(
  "path-exclude=/usr/share/doc/*" "path-include=/usr/share/doc/*/copyright"
  "path-exclude=/usr/share/man/*" "path-exclude=/usr/share/groff/*" "path-exclude=/usr/share/info/*"
  "path-exclude=/usr/share/lintian/*" "path-exclude=/usr/share/linda/*"
  "path-exclude=/usr/share/locale/*"
)
# The official image's /etc/apt/apt.conf.d/docker-* settings. Dockerfiles written for it (this
# one too) remove only /var/lib/apt/lists and count on apt keeping no .deb files or package
# caches (about 90 MB after installing python3).
readonly APT_CONF='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::GzipIndexes "true";
Acquire::Languages "none";
Apt::AutoRemove::SuggestsImportant "false";'

PROJECT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
readonly PROJECT_DIR
readonly CACHE_ROOT="${MODELCAR_ASSETS_CACHE:-${HOME}/.cache/modelcar-prefetcher}"
readonly STORAGE_DIR="${CACHE_ROOT}/buildah"

log() { printf 'agent-image: %s\n' "$*" >&2; }
die() { printf 'agent-image: ERROR: %s\n' "$*" >&2; exit 1; }

base_registry=""
push_ref=""
storage_driver="overlay"
ca_bundle="/etc/ssl/certs/ca-certificates.crt"
[[ -f "${ca_bundle}" ]] || ca_bundle="none"
refresh_base=0
while (($#)); do
  case "$1" in
    --base-registry) base_registry="${2:?--base-registry needs HOST:PORT}"; shift 2 ;;
    --push) push_ref="${2:?--push needs a reference}"; shift 2 ;;
    --storage-driver) storage_driver="${2:?--storage-driver needs overlay or vfs}"; shift 2 ;;
    --ca-bundle) ca_bundle="${2:?--ca-bundle needs a file or none}"; shift 2 ;;
    --refresh-base) refresh_base=1; shift ;;
    -h|--help) sed -n '2,37s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "${storage_driver}" in overlay|vfs) ;; *) die "--storage-driver must be overlay or vfs" ;; esac
[[ "${ca_bundle}" == none || -f "${ca_bundle}" ]] || die "--ca-bundle ${ca_bundle}: no such file"
[[ "$(id -u)" == 0 ]] || die "run as root (mmdebstrap --mode=root, buildah --isolation chroot)"
for tool in buildah:buildah mmdebstrap:mmdebstrap flock:util-linux; do
  command -v "${tool%%:*}" >/dev/null \
    || die "${tool%%:*} not found: install the Debian package '${tool#*:}'"
done

ARCH="$(dpkg --print-architecture)"
readonly ARCH
# The hooks' $1 and variables are for the shell mmdebstrap runs them in.
# shellcheck disable=SC2016
MMDEBSTRAP_OPTIONS=(--mode=root --variant="${VARIANT}" --format=tar
  # Merged /usr without the usrmerge package, which would pull perl into the base.
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # After the bootstrap, whose own use of apt's caches it would change. mmdebstrap's cleanup
  # runs later but no longer sees the caches the settings disable, hence the rm.
  --customize-hook='printf "%s\n" "${AGENT_IMAGE_APT_CONF:?}" >"$1/etc/apt/apt.conf.d/docker-clean"'
  --customize-hook='rm -f "$1"/var/cache/apt/*.bin')
for item in "${SLIM_EXCLUDES[@]}"; do MMDEBSTRAP_OPTIONS+=(--dpkgopt="${item}"); done
readonly SOURCES=("deb ${MIRROR} ${SUITE} main" "deb ${MIRROR} ${SUITE}-updates main"
  "deb ${SECURITY_MIRROR} ${SUITE}-security main")
RECIPE="$(printf '%s\n' "${MMDEBSTRAP_OPTIONS[@]}" "${SOURCES[@]}" "${APT_CONF}" | sha256sum | cut -c1-12)"
readonly BASE_TAR="${CACHE_ROOT}/debian-${SUITE}-${VARIANT}-${ARCH}-${RECIPE}.tar"

mkdir -p "${STORAGE_DIR}"
# One run at a time: runs share the base tarball and the storage with its layer cache.
exec 9>"${CACHE_ROOT}/agent-image.lock"
flock 9

WORK="$(mktemp -d "${TMPDIR:-/tmp}/agent-image.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

bootstrap_base() {
  local start=${SECONDS}
  log "bootstrapping Debian ${SUITE} (${VARIANT}) from ${MIRROR} into ${BASE_TAR}"
  AGENT_IMAGE_APT_CONF="${APT_CONF}" mmdebstrap "${MMDEBSTRAP_OPTIONS[@]}" \
    "${SUITE}" "${WORK}/base.tar" "${SOURCES[@]}" >"${WORK}/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "${WORK}/mmdebstrap.log" >&2; die "mmdebstrap failed (its log above)"; }
  find "${CACHE_ROOT}" -maxdepth 1 -name "debian-${SUITE}-${VARIANT}-${ARCH}-*.tar" -delete
  mv -f "${WORK}/base.tar" "${BASE_TAR}"
  log "bootstrapped in $((SECONDS - start))s"
}

# A private containers configuration, so that the host's registries.conf, storage.conf and
# policy.json do not change the build. (Still read: drop-ins in /etc/containers/registries.conf.d,
# for which buildah 1.28 has no override; still written: containers/image's blob-info cache in
# /var/lib/containers/cache, a digest lookup table.)
write_containers_config() {
  local run
  # The run root holds mount state; one per boot, so a reboot never leaves stale mount counts.
  run="${STORAGE_DIR}/run.$(cat /proc/sys/kernel/random/boot_id)"
  find "${STORAGE_DIR}" -mindepth 1 -maxdepth 1 -name 'run.*' ! -path "${run}" -exec rm -rf {} +
  printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' \
    "${storage_driver}" "${STORAGE_DIR}/root-${storage_driver}" "${run}" >"${WORK}/storage.conf"
  {
    printf 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
    if [[ -n "${base_registry}" ]]; then
      printf '\n[[registry]]\nprefix = "docker.io"\nlocation = "%s"\ninsecure = true\n' "${base_registry}"
    fi
  } >"${WORK}/registries.conf"
  printf '{"default": [{"type": "insecureAcceptAnything"}]}\n' >"${WORK}/policy.json"
  export CONTAINERS_STORAGE_CONF="${WORK}/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="${WORK}/registries.conf"
  POLICY=(--signature-policy "${WORK}/policy.json")
}

# The base image in local storage, named by the tarball's content; committed once per tarball.
commit_base() {
  local name ctr old
  name="localhost/modelcar-prefetcher-base:${SUITE}-${VARIANT}-$(sha256sum "${BASE_TAR}" | cut -c1-16)"
  if ! buildah inspect --type image "${name}" >/dev/null 2>&1; then
    log "committing the base image ${name}"
    ctr="$(buildah from "${POLICY[@]}" scratch)"
    buildah add --quiet "${ctr}" "${BASE_TAR}" / >/dev/null  # a local tar archive is extracted
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd bash --created-by "mmdebstrap --variant=${VARIANT} ${SUITE}" "${ctr}"
    # The tarball's time as the creation time: one tarball, one image ID, which the build's
    # layer cache is keyed on.
    buildah commit --quiet --rm "${POLICY[@]}" --timestamp "$(stat -c %Y "${BASE_TAR}")" \
      "${ctr}" "${name}" >/dev/null
  fi
  for old in $(buildah images --noheading --format '{{.Name}}:{{.Tag}}'); do
    [[ "${old}" != "${name%:*}:"* || "${old}" == "${name}" ]] || buildah rmi "${old}" >/dev/null
  done
  printf '%s\n' "${name}"
}

# Make `debian:bookworm-slim` resolve to the base: pushed to the base registry, or tagged locally.
provide_base() {
  local name="$1" target
  if [[ -n "${base_registry}" ]]; then
    target="${base_registry}/${BASE_REPOSITORY}:${BASE_TAG}"
    log "pushing the base to ${target}"
    buildah push --quiet --tls-verify=false "${POLICY[@]}" "${name}" "docker://${target}"
  else
    buildah tag "${name}" "docker.io/${BASE_REPOSITORY}:${BASE_TAG}"
  fi
}

build_image() {
  local start=${SECONDS} flags
  flags=(--isolation chroot --layers --force-rm "${POLICY[@]}"
         --pull="$([[ -n "${base_registry}" ]] && echo always || echo never)")
  if [[ "${ca_bundle}" != none ]]; then
    # pip reads ~/.config/pip/pip.conf. The directory is mounted over root's home, which the base
    # has: buildah 1.28 leaves the mount points it has to create in the image's layers, and no
    # other way hands pip a setting without changing the Dockerfile.
    mkdir -p "${WORK}/home/.config/pip"
    cp "${ca_bundle}" "${WORK}/home/ca-certificates.crt"
    printf '[global]\ncert = /root/ca-certificates.crt\n' >"${WORK}/home/.config/pip/pip.conf"
    flags+=(--volume "${WORK}/home:/root:ro")
  fi
  log "building ${LOCAL_IMAGE} from ${PROJECT_DIR}/Dockerfile"
  # The build stage first, under a tag of its own: pruning keeps tagged images and their parents,
  # so its layers stay cached although the final image does not descend from them.
  buildah build "${flags[@]}" --target build --tag "${LOCAL_IMAGE}-build-stage" \
    --file "${PROJECT_DIR}/Dockerfile" "${PROJECT_DIR}" >&2
  buildah build "${flags[@]}" --iidfile "${WORK}/iid" --tag "${LOCAL_IMAGE}" \
    --file "${PROJECT_DIR}/Dockerfile" "${PROJECT_DIR}" >&2
  log "built in $((SECONDS - start))s"
  # Images no tag refers to any more: earlier builds of sources that changed since.
  buildah rmi --prune >/dev/null
}

# REF without its tag or digest: HOST:PORT/NAME:TAG -> HOST:PORT/NAME.
repository_of() {
  local name="${1%%@*}"
  if [[ "${name##*/}" == *:* ]]; then name="${name%:*}"; fi
  printf '%s\n' "${name}"
}

push_image() {
  log "pushing ${LOCAL_IMAGE} to ${push_ref}"
  buildah push --quiet --tls-verify=false "${POLICY[@]}" --digestfile "${WORK}/digest" \
    "${LOCAL_IMAGE}" "docker://${push_ref}"
  printf '%s@%s\n' "$(repository_of "${push_ref}")" "$(cat "${WORK}/digest")"
}

write_containers_config
# Leftovers of an interrupted run (working containers hold mounts); the lock says none is running.
buildah rm --all >/dev/null
if [[ ! -f "${BASE_TAR}" || ${refresh_base} == 1 ]]; then
  bootstrap_base
fi
provide_base "$(commit_base)"
build_image
if [[ -n "${push_ref}" ]]; then
  push_image
else
  cat "${WORK}/iid"
  echo
fi
