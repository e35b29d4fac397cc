#!/usr/bin/env bash
# make run-node: a real kubelet node in the test bed (issue #21). Starts the
# bed first when it is not running (as `make run` does), installs Debian's
# containerd, runc and CNI plugins when missing, builds kubelet and
# kube-scheduler (cached, see
# build-kubelet.sh), and starts node $KUBELET_NODE (default kubelet-1):
# kubelet with containerd as its CRI runtime, everything under
# <state>/kubelet/<node>/. `make stop` stops it and removes what it made.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
start=$SECONDS
unset KUBECONFIG
state="${IRONVIRT_STATE:-$RUN_STATE}"
node="${KUBELET_NODE:-kubelet-1}"
# The image the node has without a registry (testbed/src/kubelet/config.rs).
KUBELET_BUSYBOX_IMAGE="ironvirt.local/busybox:1"

install_node_packages
kubelet="$("$HACK/build-kubelet.sh")"
if [[ -x "$TESTBED" ]] && IRONVIRT_STATE="$state" "$TESTBED" status >/dev/null 2>&1; then
  build_rust
else
  log "the test bed in $state is not running: starting it (make run)"
  IRONVIRT_STATE="$state" "$HACK/run.sh"
fi
log "starting kubelet node $node (containerd, kubelet; logs: $state/logs/{kubelet-node-$node,containerd-$node,kubelet-$node}.log)"
dir="$(IRONVIRT_STATE="$state" "$TESTBED" kubelet-up "$node" --kubelet "$kubelet")" \
  || die "kubelet node $node did not become Ready (logs in $state/logs); make stop removes what was started."
cat <<MSG
ironvirt: kubelet node $node is Ready ($((SECONDS - start)) s); its files are in $dir.
  export KUBECONFIG=$state/kubeconfig PATH=$K8S_BIN:\$PATH
  kubectl get nodes -o wide
  kubectl run hello --image=$KUBELET_BUSYBOX_IMAGE --restart=Never \\
    --overrides='{"spec":{"hostNetwork":true,"nodeName":"$node"}}' -- -c 'echo hello from $node'
  kubectl logs hello
kube-scheduler runs too (started with the first kubelet node), so Deployments' pods get a node. The Nodes that
ironvirt's handlers registered in this bed have no kubelet: pin pods with a nodeSelector
kubernetes.io/hostname=$node (or spec.nodeName). Images: $KUBELET_BUSYBOX_IMAGE and the
sandbox image, imported into the node's containerd (ctr --address $dir/containerd/containerd.sock -n k8s.io images ls).
MSG
