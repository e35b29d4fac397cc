#!/usr/bin/env bash
# make chaos SEED=N OPS=N: the seeded chaos run of tests/tests/chaos.rs, long,
# on a test bed of its own (.state/chaos): random lifecycle operations
# (hostDisk and containerDisk VMs, live migrations, a VMI ReplicaSet) on two
# nodes of the test's own, with the operator, the nodes' handlers and
# libvirtds, and — as the bed is its own (IRONVIRT_CHAOS_OWN_BED=1) —
# ironvirt-api, kube-apiserver and etcd SIGKILLed and started again, or
# SIGSTOPped and continued, at random points; then the invariants; then
# kube-apiserver and etcd taken away for 60 s each while consoles are open.
# A failure prints the seed and the operation log.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
install_guest_image "$guest_dir"
build_rust
state="$REPO/.state/chaos"
testbed_down "$state" || true
rm -rf "$state"
trap 'testbed_down "$state" || true' EXIT
testbed_up "$state" "$guest_dir"
start_api "$state" >/dev/null || die "ironvirt-api did not start (log: $state/logs/ironvirt-api.log)."
seed="${SEED:-1}"
ops="${OPS:-500}"
log "chaos: seed $seed, $ops operations"
IRONVIRT_STATE="$state" IRONVIRT_ETCD_BIN="$ETCD_BIN" IRONVIRT_K8S_BIN="$K8S_BIN" \
  IRONVIRT_CHAOS_SEED="$seed" IRONVIRT_CHAOS_OPS="$ops" IRONVIRT_CHAOS_OWN_BED=1 \
  cargo test --quiet -p ironvirt-tests --test chaos --test outage_watch --manifest-path "$REPO/Cargo.toml" -- --nocapture --test-threads=1 \
  || die "chaos seed $seed failed (the operation log is above; replay: make chaos SEED=$seed OPS=$ops)."
