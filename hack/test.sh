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

"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
timing "dependencies, control-plane binaries and guest ready"

cd "$REPO"
cargo fmt --all --check || die "code is not formatted: run 'cargo fmt --all'."
cargo clippy --quiet --workspace --all-targets -- -D warnings || die "clippy found problems (see above)."
timing "lint clean"
cargo build --quiet --workspace --all-targets || die "cargo build failed."
timing "built"

"$HACK/check-run-stop.sh"
timing "run/stop lifecycle checked"

# The shared test bed of this run, from a clean state.
testbed_down "$TEST_STATE" || true
rm -rf "$TEST_STATE"
cleanup() {
  local rc=$?
  testbed_down "$TEST_STATE" || rc=1
  left="$(pgrep -a -r R,S,D,T -f "$TEST_STATE/" || true)"
  if [[ -n "$left" ]]; then
    echo "test bed processes left after stopping it:" >&2
    echo "$left" >&2
    rc=1
  fi
  timing "done (exit $rc)"
  exit $rc
}
trap cleanup EXIT
testbed_up "$TEST_STATE" "$guest_dir" || die "the test bed did not start; logs are in $TEST_STATE/logs."
timing "test bed up"

export IRONVIRT_STATE="$TEST_STATE"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
timing "cargo test passed"

# Everything the tests created is gone.
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$TEST_STATE/kubeconfig")
left_ns="$("${KUBECTL[@]}" get namespaces -l ironvirt.io/test -o name)"
[[ -z "$left_ns" ]] || die "namespaces created by tests were not deleted: $left_ns"
left_dom="$(virsh -c qemu:///system list --all --name | grep '^ironvirt-test-' || true)"
[[ -z "$left_dom" ]] || die "domains created by tests were left: $left_dom"
echo "post-test checks: no test namespace and no test domain left"
