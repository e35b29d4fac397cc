# Shared settings for the ironvirt test-bed scripts. Source it; do not run it.
# shellcheck shell=bash

# Pinned versions of everything the test bed builds.
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# Debian cloud kernel used by the test guest (bookworm).
GUEST_KERNEL_PKG="${GUEST_KERNEL_PKG:-linux-image-cloud-amd64}"

HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
# Toolchains installed the usual ways come first, before distribution packages
# that may be too old (Debian's go 1.19, cargo 1.63).
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IRONVIRT_CACHE="${IRONVIRT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ironvirt}"
GO_VERSION_KEY="$(go env GOVERSION 2>/dev/null || echo nogo)"
export IRONVIRT_CACHE
export GOMODCACHE="$IRONVIRT_CACHE/go/$GO_VERSION_KEY/mod"
export GOCACHE="$IRONVIRT_CACHE/go/$GO_VERSION_KEY/build"
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export CGO_ENABLED=0
# CI builds once in a clean clone: incremental compilation data (several GB
# in target/debug/incremental) would never be read again.
if [[ "${CI:-}" == true ]]; then
  export CARGO_INCREMENTAL=0
fi

K8S_BIN="$IRONVIRT_CACHE/k8s/$K8S_VERSION/bin"
ETCD_BIN="$IRONVIRT_CACHE/etcd/$ETCD_VERSION/bin"
TESTBED="$REPO/target/debug/ironvirt-testbed"
# State directories (data, logs, pids, PKI) live in the checkout, never in a
# shared /tmp path: `make run`, `make test` and the run/stop check each have one.
RUN_STATE="$REPO/.state/run"
TEST_STATE="$REPO/.state/test"
RUNCHECK_STATE="$REPO/.state/runcheck"
# Where the examples expect the test guest's disk (a hostDisk path on the node).
GUEST_IMAGE="${IRONVIRT_GUEST_IMAGE:-/var/lib/ironvirt/images/busybox.qcow2}"
# The test bed turns hostDisk on (ironvirt-api --host-disk-root): a VMI's
# images must lie in $HOSTDISK_ROOT/<its namespace>/. The examples use the
# guest image in namespace default's directory; the tests link it into theirs
# (tests/src/hostdisk.rs). deploy/ leaves hostDisk off.
HOSTDISK_ROOT="/var/lib/ironvirt/hostdisks"

die() {
  echo "ironvirt: $*" >&2
  exit 1
}

log() {
  echo "==> $*" >&2
}

# Prints the free space where the checkout, the test bed's VMI images and the
# caches live, and warns when it is low: a VMI whose emptyDisk is larger than
# the node's free space is refused (InsufficientStorage), as it should be, and
# KubeVirt's examples ask for up to 2Gi.
report_disk() {
  local what="$1" avail
  avail="$(df -B1 --output=avail "$REPO" 2>/dev/null | tail -1 | tr -d ' ')"
  [[ $avail =~ ^[0-9]+$ ]] || return 0
  echo "==> disk ($what): $((avail >> 20)) MiB free on $(df --output=target "$REPO" | tail -1)" >&2
  if ((avail < 6 << 30)); then
    echo "ironvirt: WARNING: less than 6 GiB free on the file system of $REPO; tests with large emptyDisks will be refused InsufficientStorage" >&2
  fi
}

# Fails with one sentence when a toolchain is missing or too old.
check_toolchains() {
  command -v go >/dev/null || die "Go is not installed; install Go 1.26 or newer (https://go.dev/doc/install) and run again."
  local gov
  gov="$(go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+)\.([0-9]+).*/\1 \2/')"
  read -r gomaj gomin <<<"$gov"
  if [[ -z "$gomaj" ]] || ((gomaj < 1 || (gomaj == 1 && gomin < 26))); then
    die "Go $(go env GOVERSION 2>/dev/null) is too old; the test bed needs Go 1.26 or newer to build Kubernetes 1.36."
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install Rust with rustup (https://rustup.rs) and run again."
  local rmin
  rmin="$(rustc --version 2>/dev/null | sed -E 's/^rustc 1\.([0-9]+).*/\1/')"
  [[ -n "$rmin" && "$rmin" -ge 89 ]] || die "Rust $(rustc --version 2>/dev/null) is too old; ironvirt needs Rust 1.89 or newer (rustup update stable)."
}

# Builds the workspace's binaries (debug: quick to build, fast enough here).
build_rust() {
  log "cargo build (ironvirt workspace)"
  cargo build --quiet --workspace --bins --manifest-path "$REPO/Cargo.toml" \
    || die "cargo build failed; see the errors above."
}

# Copies the guest's disk to $GUEST_IMAGE when it changed, and links it into
# namespace default's hostDisk directory, the path the examples document.
install_guest_image() {
  local guest_dir="$1" example="$HOSTDISK_ROOT/default/busybox.qcow2"
  if ! cmp -s "$guest_dir/disk.qcow2" "$GUEST_IMAGE" 2>/dev/null; then
    install -D -m 0644 "$guest_dir/disk.qcow2" "$GUEST_IMAGE" \
      || die "cannot write the guest image to $GUEST_IMAGE (set IRONVIRT_GUEST_IMAGE to another path)."
  fi
  install -d -m 0755 "$HOSTDISK_ROOT/default" \
    || die "cannot create the hostDisk directory $HOSTDISK_ROOT/default."
  if ! cmp -s "$GUEST_IMAGE" "$example" 2>/dev/null; then
    rm -f "$example"
    ln "$GUEST_IMAGE" "$example" 2>/dev/null || cp "$GUEST_IMAGE" "$example" \
      || die "cannot place the guest image at $example."
  fi
}

# Starts the test bed in state directory $1 with libvirt and the guest in $2
# ($3 = --no-libvirt: without the host's libvirtd, for a bed whose nodes all
# run in namespaces of their own, see start_nodes).
testbed_up() {
  local state="$1" guest_dir="$2" libvirt=(--libvirt)
  [[ "${3:-}" == --no-libvirt ]] && libvirt=()
  IRONVIRT_STATE="$state" "$TESTBED" up "${libvirt[@]}" \
    --etcd-bin "$ETCD_BIN" --k8s-bin "$K8S_BIN" --guest-dir "$guest_dir" >/dev/null
}

# start_nodes STATE N REGISTRY_PORT: nodes node-1 … node-N (issue #18), each
# in network and mount namespaces of its own with its own virtlogd, libvirtd
# (own host_uuid) and ironvirt-handler, on the bed's bridge (10.213.0.0/24 or
# the first free /24 after it; IRONVIRT_NODE_SUBNET chooses one). The node
# reaches kube-apiserver and the registry on its own 127.0.0.1 through a
# forwarder; ironvirt-api reaches the handler's streams at the node's address.
# `ironvirt-testbed down` (make stop) removes all of it. Prints one line per
# node: name, address, libvirt URI.
start_nodes() {
  local state="$1" count="$2" registry_port="$3" k node vars
  local NODE_NAME NODE_ADDR NODE_NETNS NODE_LIBVIRT_URI NODE_STATE_DIR
  for ((k = 1; k <= count; k++)); do
    node="node-$k"
    vars="$(IRONVIRT_STATE="$state" "$TESTBED" node-up "$node" --handler "$REPO/target/debug/ironvirt-handler" \
      --forward-port "$registry_port" -e RUST_LOG=info -- \
      --domain-type "${IRONVIRT_DOMAIN_TYPE:-qemu}" --register-node \
      --node-labels "kubernetes.io/hostname=$node" \
      --registries-config "$state/registries.yaml" --host-disk-root "$HOSTDISK_ROOT")" || return 1
    NODE_NAME="" NODE_ADDR="" NODE_NETNS="" NODE_LIBVIRT_URI="" NODE_STATE_DIR=""
    eval "$vars"
    echo "$NODE_NAME $NODE_ADDR $NODE_LIBVIRT_URI"
  done
}

# The test bed's OCI registry (Debian's docker-registry, plain HTTP on
# 127.0.0.1), supervised with the bed, serving the test guest as a
# containerDisk under the names KubeVirt's examples and documentation use;
# and $1/registries.yaml, the handlers' mirror configuration mapping those
# registries to it; $2 is the guest directory (its kernel and initramfs make
# the kernel-boot image). Prints the registry's host:port.
CONTAINERDISK_NAMES=(
  kubevirt/fedora-cloud-container-disk-demo:latest kubevirt/fedora-cloud-container-disk-demo:devel
  kubevirt/alpine-container-disk-demo:latest kubevirt/alpine-container-disk-demo:devel
  kubevirt/fedora-with-test-tooling-container-disk:devel
  containerdisks/fedora:latest containerdisks/ubuntu:latest
)
# The guest with the small kernel under the cirros names (and the user
# guide's fedora25): those examples give their guests 64M, too little for
# the cloud kernel.
SMALL_NAMES=(
  kubevirt/cirros-container-disk-demo:latest kubevirt/cirros-container-disk-demo:devel
  kubevirt/cirros-registry-disk-demo:latest vmidisks/fedora25:latest
)
# The kernel-boot image (the guest's kernel and initramfs) under the names
# of KubeVirt's kernel-boot demo.
KERNELBOOT_NAMES=(
  kubevirt/alpine-ext-kernel-boot-demo:latest kubevirt/alpine-ext-kernel-boot-demo:devel
)
start_registry() {
  local state="$1" guest_dir="$2" port host dir="$1/registry"
  port="$(IRONVIRT_STATE="$state" "$TESTBED" free-port)" || return 1
  host="127.0.0.1:$port"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: $host
YAML
  IRONVIRT_STATE="$state" "$TESTBED" spawn registry -- "$(command -v docker-registry)" serve "$dir/config.yml" >/dev/null || return 1
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  "$REPO/target/debug/push-containerdisk" "$host" "$GUEST_IMAGE" "${CONTAINERDISK_NAMES[@]}" \
    --kernel-boot "$guest_dir/vmlinuz" "$guest_dir/initramfs.cpio.gz" "${KERNELBOOT_NAMES[@]}" >/dev/null || return 1
  "$REPO/target/debug/push-containerdisk" "$host" "$guest_dir/disk-small.qcow2" "${SMALL_NAMES[@]}" >/dev/null || return 1
  cat >"$state/registries.yaml" <<YAML
# The test bed's registry ($host) serves the names KubeVirt's examples use.
registries:
  quay.io:
    mirrors: ["$host"]
  docker.io:
    mirrors: ["$host"]
  "registry:5000":
    mirrors: ["$host"]
  "$host":
    insecure: true
YAML
  echo "$host"
}

# Stops the test bed in state directory $1 (nothing to do when it has none).
testbed_down() {
  local state="$1"
  [[ -d "$state/pids" ]] || return 0
  [[ -x "$TESTBED" ]] || build_rust
  destroy_bed_domains "$state"
  IRONVIRT_STATE="$state" "$TESTBED" down
  cleanup_guest_networks
}

# guest_networks_without_domain: the uids of VMI networks (network namespace
# ivm-<uid> and its passt, made by a handler under /run/ironvirt/net) whose VMI
# has no running domain on this machine: what a handler killed before it could
# clean up leaves behind.
guest_networks_without_domain() {
  local dir=/run/ironvirt/net running f uid d
  [[ -d $dir ]] || return 0
  running="$(for d in $(timeout 20 virsh -c qemu:///system list --name 2>/dev/null); do
    timeout 20 virsh -c qemu:///system dumpxml "$d" 2>/dev/null | grep -o "uid='[^']*'" || true
  done)"
  for f in "$dir"/*.node; do
    [[ -e $f ]] || continue
    uid="$(basename "$f" .node)"
    grep -q "uid='$uid'" <<<"$running" || echo "$uid"
  done
}

# cleanup_guest_networks: removes the networks guest_networks_without_domain lists.
cleanup_guest_networks() {
  local dir=/run/ironvirt/net uid pid
  for uid in $(guest_networks_without_domain); do
    pid="$(cat "$dir/$uid/passt.pid" 2>/dev/null || true)"
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    sleep 0.2
    ip netns delete "ivm-$uid" 2>/dev/null || true
    rm -rf "${dir:?}/$uid" "$dir/$uid.node"
  done
}

# destroy_bed_domains STATE: destroys and undefines the libvirt domains of the
# VMIs this test bed still has (matched by the VMI uid in ironvirt's domain
# metadata), so that stopping a bed whose libvirtd keeps running (one started
# by someone else) leaves no guest behind. Domains of other beds are untouched.
destroy_bed_domains() {
  local state="$1" uids d meta u
  [[ -f "$state/kubeconfig" ]] || return 0
  uids="$(timeout 10 "$K8S_BIN/kubectl" --kubeconfig "$state/kubeconfig" get vmi -A \
    -o jsonpath='{.items[*].metadata.uid}' 2>/dev/null)" || return 0
  [[ -n "$uids" ]] || return 0
  for d in $(timeout 20 virsh -c qemu:///system list --all --name 2>/dev/null | grep '^ironvirt-' || true); do
    meta="$(timeout 10 virsh -c qemu:///system metadata "$d" https://ironvirt.io/domain/v1 2>/dev/null)" || continue
    for u in $uids; do
      if [[ "$meta" == *"$u"* ]]; then
        echo "stopping guest $d" >&2
        timeout 30 virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
        timeout 20 virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
      fi
    done
  done
}

# install_crds STATE: the kubevirt.io, instancetype.kubevirt.io and pool.kubevirt.io CRDs
# (server-side apply), Established.
install_crds() {
  local kubectl=("$K8S_BIN/kubectl" --kubeconfig "$1/kubeconfig")
  "${kubectl[@]}" apply --server-side --force-conflicts --field-manager=ironvirt -f "$REPO/deploy/crds" >/dev/null \
    || { echo "installing the CRDs failed; see the error above." >&2; return 1; }
  "${kubectl[@]}" wait --for=condition=Established --timeout=60s -f "$REPO/deploy/crds" >/dev/null \
    || { echo "the CRDs did not become Established." >&2; return 1; }
}

# install_instancetypes STATE: the common cluster instancetypes and
# preferences. Their validating webhooks must be reachable (start_api calls
# this once ironvirt-api's webhooks answer).
install_instancetypes() {
  "$K8S_BIN/kubectl" --kubeconfig "$1/kubeconfig" apply --server-side --force-conflicts --field-manager=ironvirt \
    -f "$REPO/deploy/instancetypes" >/dev/null \
    || { echo "installing the common instancetypes failed; see the error above." >&2; return 1; }
}

# Starts ironvirt-api for the test bed in state directory $1 and registers it
# with kube-apiserver: the CRDs, the user-facing ClusterRoles, an ExternalName
# Service (localhost) in ironvirt-system, the APIService
# v1.subresources.kubevirt.io and the admission webhooks. Prints the port.
start_api() {
  local state="$1" pki="$1/pki" port mport
  # API_BIN: another build of ironvirt-api (the benchmarks use the release one).
  # API_ARGS: more flags for it (space-separated).
  # Every component of the test bed, ironvirt-api included, acts as user
  # "admin" (the bed's kubeconfig): it is privileged like the components'
  # ServiceAccounts in deploy/, so that stop with a grace period may change a
  # VMI's terminationGracePeriodSeconds.
  local api_bin="${API_BIN:-$REPO/target/debug/ironvirt-api}"
  local kubectl=("$K8S_BIN/kubectl" --kubeconfig "$state/kubeconfig") extra=()
  read -ra extra <<<"${API_ARGS:-}"
  port="$(IRONVIRT_STATE="$state" "$TESTBED" free-port)" || return 1
  mport="$(IRONVIRT_STATE="$state" "$TESTBED" free-port)" || return 1
  echo "$mport" >"$state/ironvirt-api.metrics-port"
  IRONVIRT_STATE="$state" "$TESTBED" spawn ironvirt-api -e "KUBECONFIG=$state/kubeconfig" -e "RUST_LOG=info" -- \
    "$api_bin" --listen "127.0.0.1:$port" --listen "[::1]:$port" \
    --metrics-addr "127.0.0.1:$mport" --host-disk-root "$HOSTDISK_ROOT" \
    --privileged-users "admin,system:serviceaccount:ironvirt-system:ironvirt-operator,system:serviceaccount:ironvirt-system:ironvirt-api" \
    --tls-cert "$pki/ironvirt-api.crt" --tls-key "$pki/ironvirt-api.key" \
    --handler-ca "$pki/ironvirt-ca.crt" --handler-client-cert "$pki/ironvirt-api-client.crt" \
    --handler-client-key "$pki/ironvirt-api-client.key" "${extra[@]}" >/dev/null || return 1
  "${kubectl[@]}" apply -f "$REPO/deploy/rbac/kubevirt-user-roles.yaml" >/dev/null || return 1
  "${kubectl[@]}" apply -f - >/dev/null <<YAML || return 1
apiVersion: v1
kind: Namespace
metadata:
  name: ironvirt-system
---
apiVersion: v1
kind: Service
metadata:
  name: ironvirt-api
  namespace: ironvirt-system
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - name: https
      port: $port
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1.subresources.kubevirt.io
spec:
  group: subresources.kubevirt.io
  version: v1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: $(base64 -w0 <"$pki/ironvirt-ca.crt")
  service:
    namespace: ironvirt-system
    name: ironvirt-api
    port: $port
YAML
  "${kubectl[@]}" wait --for=condition=Available --timeout=60s apiservice/v1.subresources.kubevirt.io >/dev/null || return 1
  # The admission webhooks, registered by URL here (by Service in deploy/).
  install_crds "$state" || return 1
  "$api_bin" webhook-configurations --url "https://127.0.0.1:$port" \
    --ca-bundle "$pki/ironvirt-ca.crt" | "${kubectl[@]}" apply -f - >/dev/null || return 1
  # kube-apiserver picks webhook configurations up from a watch: wait until
  # an invalid VMI is refused by ours.
  local i out
  for i in $(seq 1 100); do
    out="$("${kubectl[@]}" create --dry-run=server -o name -f - 2>&1 <<'YAML' || true
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: webhook-probe
  namespace: default
spec:
  domain:
    devices:
      disks:
        - name: missing
YAML
)"
    [[ "$out" == *"has no volume of the same name"* ]] && break
    (( i == 100 )) && { echo "the admission webhooks did not become active: $out" >&2; return 1; }
    sleep 0.1
  done
  # After the webhooks (a restarted ironvirt-api has a new port: until they
  # are re-registered, the instancetype webhooks would point at the old one).
  install_instancetypes "$state" || return 1
  echo "$port"
}

# kubelet_bin_dir: where hack/build-kubelet.sh caches kubelet (issue #21, the
# bed's kubelet node), keyed by the control plane's version.
kubelet_bin_dir() {
  echo "$IRONVIRT_CACHE/kubelet/$K8S_VERSION/bin"
}

# install_node_packages: Debian's containerd, runc and CNI plugins, which a
# kubelet node (make run-node, make test-node) needs; installed only then.
install_node_packages() {
  local p missing=()
  for p in containerd runc containernetworking-plugins; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "a kubelet node needs Debian packages (${missing[*]}); install them as root with apt-get."
  command -v apt-get >/dev/null || die "apt-get not found: a kubelet node needs ${missing[*]} from Debian."
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed; check that Debian's package mirror is reachable."
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; see the output above."
}

# install_image_packages: Debian's buildah (and runc, which it runs RUN steps
# with) and mmdebstrap, which `make images` (hack/build-images.sh) needs;
# installed only then.
install_image_packages() {
  local p missing=()
  for p in buildah runc mmdebstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "make images needs Debian packages (${missing[*]}); install them as root with apt-get."
  command -v apt-get >/dev/null || die "apt-get not found: make images needs ${missing[*]} from Debian."
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed; check that Debian's package mirror is reachable."
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; see the output above."
}
