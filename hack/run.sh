#!/usr/bin/env bash
# make run: install what is missing, build, start the control plane, libvirt and
# every ironvirt component that exists so far, and leave them running.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
start=$(date +%s)

# make run always starts a cluster of its own on this machine and talks only
# to it (--kubeconfig everywhere). A KUBECONFIG in the environment is noted,
# neither used nor changed: unset it here so that no tool falls back to it.
user_kubeconfig="${KUBECONFIG:-}"
unset KUBECONFIG
# NODES=N (make run NODES=2): N nodes, each in namespaces of its own with its
# own libvirtd and handler (issue #18). 1: the handler of node-1 in the host's
# namespaces with the host's libvirtd, as always.
nodes="${NODES:-1}"
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || die "NODES=$nodes: want a number of nodes from 1 to 99."
up_args=()
((nodes == 1)) || up_args=(--no-libvirt)

"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
install_guest_image "$guest_dir"
build_rust

state="${IRONVIRT_STATE:-$RUN_STATE}"
log "starting the test bed in $state"
# Interrupted while starting: stop what was started.
trap 'echo "interrupted; stopping the test bed" >&2; testbed_down "$state" || true; exit 130' INT TERM
if ! testbed_up "$state" "$guest_dir" "${up_args[@]}"; then
  left=""
  [[ -d "$state/pids" ]] && left="$(ls "$state/pids")"
  [[ -z "$left" ]] || die "the test bed did not start, and stopping it failed too: run 'make stop' (logs in $state/logs)."
  die "the test bed did not start (see the error above; logs in $state/logs). Nothing was left running."
fi
trap - INT TERM
kubeconfig="$state/kubeconfig"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$kubeconfig")

log "installing the kubevirt.io CRDs"
install_crds "$state" || die "the kubevirt.io CRDs could not be installed."

# The components built so far, supervised with the test bed (stopped by make stop).
log "starting the OCI registry (containerDisks of the test guest)"
registry="$(start_registry "$state" "$guest_dir")" || die "the registry did not start or the test guest could not be pushed (log: $state/logs/registry.log)."

# The operator reads containerDisk labels (inferFromVolume) through the same
# registry configuration as the handler.
log "starting ironvirt-operator"
IRONVIRT_STATE="$state" "$TESTBED" spawn ironvirt-operator -e "KUBECONFIG=$kubeconfig" -e "RUST_LOG=info" -- \
  "$REPO/target/debug/ironvirt-operator" --metrics-addr 127.0.0.1:0 --leader-election-namespace default \
  --registries-config "$state/registries.yaml" >/dev/null \
  || die "could not start ironvirt-operator (log: $state/logs/ironvirt-operator.log)."

# The node agent for this machine. KVM does not work on the machines this
# test bed targets, so guests run under TCG unless IRONVIRT_DOMAIN_TYPE says kvm.
node="${IRONVIRT_NODE:-node-1}"

if ((nodes > 1)); then
  log "starting nodes node-1 … node-$nodes (namespaces, libvirtd and ironvirt-handler each)"
  node_lines="$(start_nodes "$state" "$nodes" "${registry##*:}")" \
    || die "the nodes did not start (logs: $state/logs/node-*.log)."
  node="node-1 … node-$nodes"
else
  log "starting ironvirt-handler for node $node"
  # The handler's own identity, as on a real cluster: a serving certificate
  # naming only $node.ironvirt-handler, and a kube-apiserver user for its node
  # with deploy/'s handler RBAC (no Secret read) and lease policy.
  HANDLER_KUBECONFIG="" HANDLER_TLS_CERT="" HANDLER_TLS_KEY="" HANDLER_CLIENT_CA=""
  eval "$(IRONVIRT_STATE="$state" "$TESTBED" handler-identity "$node")" \
    || die "could not mint the identity of the handler of $node."
  IRONVIRT_STATE="$state" "$TESTBED" spawn ironvirt-handler -e "KUBECONFIG=$HANDLER_KUBECONFIG" -e "RUST_LOG=info" -- \
    "$REPO/target/debug/ironvirt-handler" --node-name "$node" --libvirt-uri qemu:///system \
    --domain-type "${IRONVIRT_DOMAIN_TYPE:-qemu}" --state-dir "$state/handler" --register-node \
    --registries-config "$state/registries.yaml" \
    --listen 127.0.0.1:0 --health-addr 127.0.0.1:0 --host-disk-root "$HOSTDISK_ROOT" \
    --tls-cert "$HANDLER_TLS_CERT" --tls-key "$HANDLER_TLS_KEY" --client-ca "$HANDLER_CLIENT_CA" >/dev/null \
    || die "could not start ironvirt-handler (log: $state/logs/ironvirt-handler.log)."
fi

log "starting ironvirt-api (subresources.kubevirt.io) and registering it"
start_api "$state" >/dev/null || die "ironvirt-api did not start or did not become Available (log: $state/logs/ironvirt-api.log)."

log "starting the example VMs (examples/vm-cirros.yaml: a containerDisk; examples/vm-busybox.yaml: a hostDisk)"
"${KUBECTL[@]}" apply -n default -f "$REPO/examples/vm-cirros.yaml" >/dev/null || die "applying examples/vm-cirros.yaml failed."
"${KUBECTL[@]}" patch -n default vm vm-cirros --type merge -p '{"spec":{"running":true}}' >/dev/null \
  || die "starting vm-cirros failed."
"${KUBECTL[@]}" apply -n default -f "$REPO/examples/vm-busybox.yaml" >/dev/null || die "applying examples/vm-busybox.yaml failed."
for vm in vm-cirros vm-busybox; do
  phase=""
  for _ in $(seq 1 360); do
    phase="$("${KUBECTL[@]}" get -n default vmi "$vm" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == Running ]] && break
    sleep 0.5
  done
  if [[ "$phase" != Running ]]; then
    "${KUBECTL[@]}" get -n default vm,vmi -o wide >&2 || true
    die "the example VM $vm did not reach Running within 180 s (logs: $state/logs/ironvirt-operator.log and the handlers' logs there)."
  fi
done
elapsed=$(( $(date +%s) - start ))

# The component logs this run writes (libvirtd's and virtlogd's only when
# make run started them).
logs="$(cd "$state/logs" && ls -- *.log | sed 's/\.log$//' | paste -sd, -)"
logs="$state/logs/{$logs}.log"
stop_cmd="make stop"
[[ "$state" == "$RUN_STATE" ]] || stop_cmd="IRONVIRT_STATE=$state make stop"
server="$(grep -m1 'server:' "$kubeconfig" | awk '{print $2}' | tr -d '"')"
if [[ -n "$user_kubeconfig" ]]; then
  kubeconfig_note="Your KUBECONFIG ($user_kubeconfig) was not used and is unchanged; the export line below
points this shell at the test bed instead (unset KUBECONFIG, or set it back, to leave it)."
else
  kubeconfig_note="KUBECONFIG is not set in your shell; the export line below points it at the test bed."
fi

libvirt_line="libvirt (qemu:///system)"
wide_note="vm-busybox runs on node $node"
virsh_line="virsh -c qemu:///system list --all                # the domain: ironvirt-default_vm-busybox"
if ((nodes > 1)); then
  libvirt_line="$nodes nodes in namespaces of their own (each its own libvirtd)"
  wide_note="NODENAME: the node each VMI runs on"
  virsh_line="IRONVIRT_STATE=$state $TESTBED nodes   # each node's address and libvirt URI (virsh -c URI list)"
  where="$("${KUBECTL[@]}" get -n default vmi -o jsonpath='{range .items[*]}{.metadata.name} on {.status.nodeName}; {end}' 2>/dev/null || true)"
  echo "nodes (name, address on the bridge, libvirt URI):" >&2
  echo "$node_lines" >&2
  echo "example VMs: $where" >&2
fi

cat <<MSG

ironvirt test bed is up (${elapsed}s): a Kubernetes $K8S_VERSION control plane on 127.0.0.1, $libvirt_line,
the kubevirt.io/v1 API (VirtualMachine, VirtualMachineInstance, ReplicaSet, Preset), ironvirt-operator,
ironvirt-handler for node $node, ironvirt-api (subresources.kubevirt.io) and an OCI registry ($registry) that
serves the test guest as quay.io/kubevirt/cirros-container-disk-demo and the other names KubeVirt's examples use.
The example VMs vm-cirros (containerDisk) and vm-busybox (hostDisk) are Running.

make run talks only to the local cluster it started:
  cluster:     $server  (context ironvirt-testbed, user admin; state in $state)
  kubeconfig:  $kubeconfig
  kubectl:     $K8S_BIN/kubectl  (same version as the server)
  ironctl:     $REPO/target/debug/ironctl  (also kubectl-ironctl beside it, for 'kubectl ironctl')
  logs:        $logs
  guest disk:  $GUEST_IMAGE  (used by examples/*busybox*.yaml)
$kubeconfig_note

Try next (paste into a shell):
  export KUBECONFIG=$kubeconfig PATH=$REPO/target/debug:$K8S_BIN:\$PATH
  ironctl console vm-cirros                         # the serial console; Ctrl+] leaves
  kubectl get vms,vmis
  ironctl vnc screenshot vm-busybox -f screen.png   # the VM's screen as a PNG

More:
  kubectl get vms,vmis -o wide                      # $wide_note
  $virsh_line
  ironctl restart vm-busybox; ironctl stop vm-busybox; ironctl start vm-busybox
  kubectl apply -f $REPO/examples/vmirs-busybox.yaml && kubectl get vmis -w
  kubectl delete vm vm-busybox                      # ACPI power-off, then the VMI goes
  ssh-keygen -q -t ed25519 -N '' -f /tmp/vmkey && kubectl create secret generic vm-ssh-keys --from-file=key=/tmp/vmkey.pub
  kubectl apply -f $REPO/examples/vm-ssh.yaml && ironctl ssh -i /tmp/vmkey root@vm/vm-ssh   # SSH via port-forward
  IRONVIRT_STATE=$state $TESTBED user alice --group dev   # mint a client certificate; prints its kubeconfig

Stop everything with: $stop_cmd
MSG
