#!/usr/bin/env bash
# make test-deploy (issue #21): ironvirt installed the way a user installs it.
# Builds the images with `make images` at two tags (IMAGE_TAG=dev, and
# $UPGRADE_TAG for the upgrade; the second build reuses every cached layer
# and differs by its tag label), starts a control plane with libvirt in a
# state directory of its own (.state/deploy-test), and runs
# tests/tests/deployed.rs: two kubelet nodes, `kubectl apply -k` of
# deploy/overlays/testbed, examples/vm-busybox.yaml, consoles, failover,
# upgrade, `kubectl delete -k`. Then stops the bed and checks that nothing is
# left: no process mentioning the state directory, no mount under it, no
# domain of the example VM. Not part of `make test`: cold, the images take
# longer to build than CI allows beside it.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
start=$SECONDS
unset KUBECONFIG
state="$REPO/.state/deploy-test"
UPGRADE_TAG="${UPGRADE_TAG:-dev-upgrade}"

"$HACK/install-deps.sh"
install_node_packages
"$HACK/build-k8s.sh"
kubelet="$("$HACK/build-kubelet.sh")"
guest_dir="$("$HACK/build-guest.sh")"
install_guest_image "$guest_dir"
virtctl="$("$HACK/build-virtctl.sh")" || die "building KubeVirt's virtctl failed; see above."
build_rust
log "make images (tag dev)"
t=$SECONDS
archives="$(IMAGE_TAG=dev "$HACK/build-images.sh")" || die "make images failed; see above."
log "images (dev) in $((SECONDS - t)) s"
t=$SECONDS
upgrade="$(IMAGE_TAG="$UPGRADE_TAG" "$HACK/build-images.sh")" || die "make images ($UPGRADE_TAG) failed; see above."
log "images ($UPGRADE_TAG) in $((SECONDS - t)) s"

testbed_down "$state" || die "could not stop the previous deploy test bed in $state"
# The example VM's domain name is the same on the bed of `make run`.
if virsh -c qemu:///system list --all --name 2>/dev/null | grep -qx 'ironvirt-default_vm-busybox'; then
  die "libvirt already runs ironvirt-default_vm-busybox (the bed of make run?): make stop first."
fi
rm -rf "$state"
trap 'testbed_down "$state" || true' EXIT
log "starting a control plane with libvirt in $state"
testbed_up "$state" "$guest_dir" || die "the control plane did not start (logs in $state/logs)."
log "cargo test --test deployed"
rc=0
IRONVIRT_STATE="$state" IRONVIRT_DEPLOY_TEST=1 IRONVIRT_KUBELET_BIN="$kubelet" IRONVIRT_TESTBED_BIN="$TESTBED" \
  IRONVIRT_IMAGE_ARCHIVES="$archives" IRONVIRT_UPGRADE_ARCHIVES="$upgrade" IRONVIRT_UPGRADE_TAG="$UPGRADE_TAG" \
  IRONVIRT_VIRTCTL="$virtctl" \
  cargo test -p ironvirt-tests --test deployed -- --ignored --nocapture --test-threads=1 || rc=$?
testbed_down "$state" || rc=1
trap - EXIT
left="$(pgrep -a -r R,S,D,T -f "$state/" || true)"
mounts="$(grep -F " $state/" /proc/self/mountinfo || true)"
domains="$(virsh -c qemu:///system list --all --name 2>/dev/null | grep '^ironvirt-default_vm-busybox$' || true)"
[[ -z "$left" ]] || { echo "$left" >&2; die "processes left after stopping the deploy test bed"; }
[[ -z "$mounts" ]] || { echo "$mounts" >&2; die "mounts left under $state"; }
[[ -z "$domains" ]] || die "the example VM's domain is left: $domains"
((rc == 0)) || die "the deploy test failed (logs in $state/logs)."
rm -rf "$state"
log "deploy test passed in $((SECONDS - start)) s; nothing left behind"
