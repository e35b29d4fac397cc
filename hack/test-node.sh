#!/usr/bin/env bash
# make test-node: the kubelet node's bed test (tests/tests/kubelet_node.rs) on
# a control plane of its own (.state/node-test, no libvirt, no ironvirt
# component), then stops it and checks that nothing is left: no process
# mentioning the state directory, no mount under it.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
start=$SECONDS
unset KUBECONFIG
state="$REPO/.state/node-test"

install_node_packages
"$HACK/build-k8s.sh"
kubelet="$("$HACK/build-kubelet.sh")"
build_rust
testbed_down "$state" || die "could not stop the previous node test bed in $state"
rm -rf "$state"
trap 'testbed_down "$state" || true' EXIT
log "starting a control plane in $state"
IRONVIRT_STATE="$state" "$TESTBED" up --etcd-bin "$ETCD_BIN" --k8s-bin "$K8S_BIN" >/dev/null \
  || die "the control plane did not start (logs in $state/logs)."
log "cargo test --test kubelet_node"
rc=0
IRONVIRT_STATE="$state" IRONVIRT_KUBELET_NODE=1 IRONVIRT_KUBELET_BIN="$kubelet" IRONVIRT_TESTBED_BIN="$TESTBED" \
  cargo test -p ironvirt-tests --test kubelet_node -- --ignored --nocapture --test-threads=1 || rc=$?
testbed_down "$state" || rc=1
trap - EXIT
left="$(pgrep -a -r R,S,D,T -f "$state/" || true)"
mounts="$(grep -F " $state/" /proc/self/mountinfo || true)"
[[ -z "$left" ]] || { echo "$left" >&2; die "processes left after stopping the node test bed"; }
[[ -z "$mounts" ]] || { echo "$mounts" >&2; die "mounts left under $state"; }
((rc == 0)) || die "the kubelet node test failed (logs in $state/logs)."
rm -rf "$state"
log "kubelet node test passed in $((SECONDS - start)) s; nothing left behind"
