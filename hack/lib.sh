# Shared settings for the ironvirt test-bed scripts. Source it; do not run it.
# shellcheck shell=bash

# Pinned versions of everything the test bed builds.
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# Debian cloud kernel used by the test guest (bookworm).
GUEST_KERNEL_PKG="${GUEST_KERNEL_PKG:-linux-image-cloud-amd64}"

IRONVIRT_CACHE="${IRONVIRT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ironvirt}"
IRONVIRT_STATE="${IRONVIRT_STATE:-${TMPDIR:-/tmp}/ironvirt-state}"
GO_VERSION_KEY="$(go env GOVERSION 2>/dev/null || echo nogo)"

export IRONVIRT_CACHE IRONVIRT_STATE
export GOMODCACHE="$IRONVIRT_CACHE/go/$GO_VERSION_KEY/mod"
export GOCACHE="$IRONVIRT_CACHE/go/$GO_VERSION_KEY/build"
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export CGO_ENABLED=0

K8S_BIN="$IRONVIRT_CACHE/k8s/$K8S_VERSION/bin"
ETCD_BIN="$IRONVIRT_CACHE/etcd/$ETCD_VERSION/bin"

die() {
  echo "ironvirt: $*" >&2
  exit 1
}

log() {
  echo "==> $*" >&2
}
