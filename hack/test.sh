#!/usr/bin/env bash
# make test: install what is missing, build, and run every test: lint, unit,
# the run/stop lifecycle, and integration tests against the real control plane
# and libvirt/QEMU.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
T0=$(date +%s)
timing() { echo "==> [$(( $(date +%s) - T0 ))s] $*" >&2; }

# Domains of test namespaces (ironvirt-test-*, and the handler's ironvirt-ht-*).
destroy_test_domains() {
  for d in $(timeout 20 virsh -c qemu:///system list --all --name 2>/dev/null | grep -E '^ironvirt-(test-|ht-|api-|cli-|e2e-|vctl-|iso-)' || true); do
    echo "destroying leftover test domain $d" >&2
    timeout 20 virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
    timeout 20 virsh -c qemu:///system undefine "$d" >/dev/null 2>&1 || true
  done
}

# Whatever happens from here on, the test bed and the domains tests made are gone at exit.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  destroy_test_domains
  cleanup_guest_networks
  testbed_down "$TEST_STATE" || rc=1
  testbed_down "$RUNCHECK_STATE" || rc=1
  local left
  left="$(pgrep -a -r R,S,D,T -f "$REPO/.state/" || true)"
  if [[ -n "$left" ]]; then
    echo "test bed processes left after stopping it:" >&2
    echo "$left" >&2
    rc=1
  fi
  timing "done (exit $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
install_guest_image "$guest_dir"
# KubeVirt's own virtctl, for the compatibility test (tests/tests/virtctl.rs).
virtctl="$("$HACK/build-virtctl.sh")" || die "building KubeVirt's virtctl failed; see above."
timing "dependencies, control-plane binaries, guest and virtctl ready"
# The pinned Go binaries are cached by version: in CI the Go build cache
# (about 4 GB) only takes disk the tests need.
if [[ "${CI:-}" == true && -d "$GOCACHE" ]]; then
  go clean -cache 2>/dev/null || rm -rf "$GOCACHE"
fi
report_disk "before the build"

cd "$REPO"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"
cargo fmt --all --check || die "code is not formatted: run 'cargo fmt --all'."
cargo clippy --quiet --workspace --all-targets -- -D warnings || die "clippy found problems (see above)."
# The web console's bundle (embedded in ironctl) must be what its pinned
# sources build. Without Node.js the check is skipped, loudly.
ui_rc=0
"$HACK/ui.sh" --check || ui_rc=$?
case $ui_rc in
  0) ;;
  2) echo "ironvirt: WARNING: Node.js/npm missing, the web console bundle (cli/ui/dist) was not checked" >&2 ;;
  *) die "cli/ui/dist is not what cli/ui's sources build: run 'make ui' and commit cli/ui/dist." ;;
esac
timing "lint clean"
cargo build --quiet --workspace --all-targets || die "cargo build failed."
timing "built"

"$HACK/check-run-stop.sh"
timing "run/stop lifecycle checked"

# The shared test bed of this run, from a clean state.
testbed_down "$TEST_STATE" || die "could not stop the previous test bed in $TEST_STATE; see above."
rm -rf "$TEST_STATE"
testbed_up "$TEST_STATE" "$guest_dir" || die "the test bed did not start; logs are in $TEST_STATE/logs."
start_api "$TEST_STATE" >/dev/null || die "ironvirt-api did not start or did not become Available (log: $TEST_STATE/logs/ironvirt-api.log)."
timing "test bed up (with ironvirt-api registered)"

# Leftovers of an earlier, interrupted run are not this run's: clear them first.
destroy_test_domains
cleanup_guest_networks
export IRONVIRT_STATE="$TEST_STATE" IRONVIRT_ETCD_BIN="$ETCD_BIN" IRONVIRT_K8S_BIN="$K8S_BIN" IRONVIRT_VIRTCTL="$virtctl"
# libvirt 9.0 (Debian 12) can deadlock when a client connection holding a
# console stream closes while the domain's character devices are freed
# (upstream bug; the handler closes consoles before it destroys a domain to
# avoid it). Should libvirtd hang anyway, record its threads and restart it,
# loudly: domains survive a libvirtd restart and the handlers reconnect.
libvirtd_watchdog() {
  local misses=0
  while sleep 20; do
    if timeout 30 virsh -c qemu:///system version >/dev/null 2>&1; then
      misses=0
      continue
    fi
    misses=$((misses + 1))
    ((misses >= 2)) || continue
    local pid
    # The host's libvirtd by its pidfile: the nodes of a multi-node test
    # (tests/tests/nodes.rs) run libvirtds of their own, with their own pidfiles.
    pid="$(cat /run/libvirtd.pid 2>/dev/null || true)"
    [[ -n $pid ]] || continue
    echo "ironvirt: LIBVIRTD HUNG (pid $pid, no answer for 60 s); threads in $TEST_STATE/logs/libvirtd-hang-$pid.txt; restarting it" >&2
    command -v gdb >/dev/null && timeout 60 gdb -p "$pid" -batch -ex 'thread apply all bt' \
      >"$TEST_STATE/logs/libvirtd-hang-$pid.txt" 2>&1 || true
    kill -9 "$pid" 2>/dev/null || true
    sleep 1
    /usr/sbin/libvirtd -d || echo "ironvirt: restarting libvirtd failed" >&2
    misses=0
  done
}
report_disk "before the tests"
libvirtd_watchdog &
watchdog_pid=$!
test_rc=0
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" || test_rc=$?
kill "$watchdog_pid" 2>/dev/null || true
report_disk "after the tests"
((test_rc == 0)) || die "cargo test failed (exit $test_rc); see above."
timing "cargo test passed"

# Everything the tests created is gone.
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$TEST_STATE/kubeconfig")
left_ns="$("${KUBECTL[@]}" get namespaces -l ironvirt.io/test -o name)"
[[ -z "$left_ns" ]] || die "namespaces created by tests were not deleted: $left_ns"
left_dom="$(timeout 20 virsh -c qemu:///system list --all --name | grep -E '^ironvirt-(test-|ht-|api-|cli-|e2e-|vctl-|iso-)' || true)"
[[ -z "$left_dom" ]] || die "domains created by tests were left: $left_dom"
left_net="$(guest_networks_without_domain)"
[[ -z "$left_net" ]] || die "VMI networks without a domain were left (uids): $left_net"
echo "post-test checks: no test namespace and no test domain left"
