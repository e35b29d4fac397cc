#!/usr/bin/env bash
# make bench: the operator benchmark (see docs/benchmarks.md) on a control plane
# of its own, with a release build of the operator. Arguments: VM counts.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
build_rust
cargo build --quiet --release -p ironvirt-operator --manifest-path "$REPO/Cargo.toml" || die "cargo build --release failed."
cargo build --quiet -p ironvirt-tests --bin operator-bench --manifest-path "$REPO/Cargo.toml" || die "building the bench failed."
state="$REPO/.state/bench"
testbed_down "$state" || true
rm -rf "$state"
trap 'testbed_down "$state" || true' EXIT
IRONVIRT_STATE="$state" "$TESTBED" up --etcd-bin "$ETCD_BIN" --k8s-bin "$K8S_BIN" >/dev/null
IRONVIRT_STATE="$state" "$REPO/target/debug/operator-bench" "$@"
