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
install_guest_image "$guest_dir"
build_rust

state="${IRONVIRT_STATE:-$RUN_STATE}"
log "starting the test bed in $state"
# Interrupted while starting: stop what was started.
trap 'echo "interrupted; stopping the test bed" >&2; testbed_down "$state" || true; exit 130' INT TERM
if ! testbed_up "$state" "$guest_dir"; then
  left=""
  [[ -d "$state/pids" ]] && left="$(ls "$state/pids")"
  [[ -z "$left" ]] || die "the test bed did not start, and stopping it failed too: run 'make stop' (logs in $state/logs)."
  die "the test bed did not start (see the error above; logs in $state/logs). Nothing was left running."
fi
trap - INT TERM
kubeconfig="$state/kubeconfig"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$kubeconfig")

log "installing the kubevirt.io CRDs"
"${KUBECTL[@]}" apply --server-side --force-conflicts --field-manager=ironvirt -f "$REPO/deploy/crds" >/dev/null \
  || die "installing the CRDs failed; see the error above."
"${KUBECTL[@]}" wait --for=condition=Established --timeout=60s -f "$REPO/deploy/crds" >/dev/null \
  || die "the CRDs did not become Established."

# The components built so far, supervised with the test bed (stopped by make stop).
log "starting ironvirt-operator"
IRONVIRT_STATE="$state" "$TESTBED" spawn ironvirt-operator -e "KUBECONFIG=$kubeconfig" -e "RUST_LOG=info" -- \
  "$REPO/target/debug/ironvirt-operator" --metrics-addr 127.0.0.1:0 --leader-election-namespace default >/dev/null \
  || die "could not start ironvirt-operator (log: $state/logs/ironvirt-operator.log)."
elapsed=$(( $(date +%s) - start ))

cat <<MSG

ironvirt test bed is up (${elapsed}s): a Kubernetes $K8S_VERSION control plane on 127.0.0.1, libvirt (qemu:///system),
the kubevirt.io/v1 API (VirtualMachine, VirtualMachineInstance, ReplicaSet, Preset) and ironvirt-operator.

  cluster:     $(grep -m1 'server:' "$kubeconfig" | awk '{print $2}' | tr -d '"')  (context ironvirt-testbed, user admin)
  kubeconfig:  $kubeconfig
  kubectl:     $K8S_BIN/kubectl  (same version as the server)
  logs:        $state/logs/{etcd,kube-apiserver,kube-controller-manager,libvirtd,virtlogd,ironvirt-operator}.log
  guest disk:  $GUEST_IMAGE  (used by examples/*busybox*.yaml)

Try next:
  export KUBECONFIG=$kubeconfig PATH=$K8S_BIN:\$PATH
  kubectl get --raw /readyz
  kubectl explain vm.spec.runStrategy
  kubectl apply -f examples/vm-busybox.yaml && kubectl get vms,vmis
  IRONVIRT_STATE=$state $TESTBED user alice --group dev   # mint a client certificate; prints its kubeconfig
  virsh -c qemu:///system list --all

The operator runs; the node handler and subresource API are not built yet, so no node runs VMIs:
a VM shows ErrorUnschedulable ("no node runs an ironvirt handler") until the handler lands.
Stop everything with: make stop
MSG
