#!/usr/bin/env bash
# make run: install what is missing, build, start the control plane, libvirt and
# every ironvirt component that exists so far, and leave them running.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
start=$(date +%s)

"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
build_rust

state="${IRONVIRT_STATE:-$RUN_STATE}"
log "starting the test bed in $state"
if ! testbed_up "$state" "$guest_dir"; then
  die "the test bed did not start (see the error above; logs in $state/logs). Nothing was left running."
fi
kubeconfig="$state/kubeconfig"
elapsed=$(( $(date +%s) - start ))

cat <<MSG

ironvirt test bed is up (${elapsed}s): a Kubernetes $K8S_VERSION control plane on 127.0.0.1 and libvirt (qemu:///system).

  cluster:     $(grep -m1 'server:' "$kubeconfig" | awk '{print $2}')  (context ironvirt-testbed, admin)
  kubeconfig:  $kubeconfig
  kubectl:     $K8S_BIN/kubectl  (same version as the server)
  logs:        $state/logs/{etcd,kube-apiserver,kube-controller-manager,libvirtd,virtlogd}.log
  guest:       $guest_dir

Try next:
  export KUBECONFIG=$kubeconfig PATH=$K8S_BIN:\$PATH
  kubectl get --raw /readyz
  kubectl get namespaces
  $TESTBED user alice --group dev      # mint a client certificate, print its kubeconfig
  virsh -c qemu:///system list --all

Stop everything with: make stop
MSG
