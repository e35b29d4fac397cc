# Shared settings for the ironvirt test-bed scripts. Source it; do not run it.
# shellcheck shell=bash

# Pinned versions of everything the test bed builds.
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# Debian cloud kernel used by the test guest (bookworm).
GUEST_KERNEL_PKG="${GUEST_KERNEL_PKG:-linux-image-cloud-amd64}"

# Toolchains installed the usual ways, even when the caller's PATH lacks them.
export PATH="$PATH:$HOME/.cargo/bin:/usr/local/go/bin:/usr/local/bin"

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

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTBED="$REPO/target/debug/ironvirt-testbed"
RUN_STATE="${IRONVIRT_RUN_STATE:-$REPO/.state/run}"
TEST_STATE="${IRONVIRT_TEST_STATE:-$REPO/.state/test}"

# Builds the workspace's binaries (debug: quick to build, fast enough here).
build_rust() {
  command -v cargo >/dev/null || die "cargo is not installed; install Rust with rustup (https://rustup.rs) and run again."
  log "cargo build (ironvirt workspace)"
  cargo build --quiet --workspace --bins --manifest-path "$REPO/Cargo.toml" \
    || die "cargo build failed; see the errors above."
}

# Starts the test bed in state directory $1 with libvirt and the guest. Prints nothing.
testbed_up() {
  local state="$1" guest_dir="$2"
  IRONVIRT_STATE="$state" "$TESTBED" up --libvirt \
    --etcd-bin "$ETCD_BIN" --k8s-bin "$K8S_BIN" --guest-dir "$guest_dir" >/dev/null
}

testbed_down() {
  local state="$1"
  [[ -x "$TESTBED" ]] || return 0
  [[ -d "$state" ]] || return 0
  IRONVIRT_STATE="$state" "$TESTBED" down
}
