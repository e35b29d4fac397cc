#!/usr/bin/env bash
# make bench: the benchmarks of docs/benchmarks.md on a test bed of their own,
# with release builds of the components. BENCH=operator|handler|images|api|ui|density|all
# (default all; density only when asked: 50 TCG guests at once); arguments:
# VM counts for the operator benchmark.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
"$HACK/install-deps.sh"
"$HACK/build-k8s.sh"
guest_dir="$("$HACK/build-guest.sh")"
install_guest_image "$guest_dir"
build_rust
cargo build --quiet --release -p ironvirt-operator -p ironvirt-handler -p ironvirt-apiserver-subresources --manifest-path "$REPO/Cargo.toml" || die "cargo build --release failed."
cargo build --quiet -p ironvirt-tests --bin operator-bench --bin handler-bench --bin api-bench --bin density-bench --manifest-path "$REPO/Cargo.toml" || die "building the benches failed."
# One state directory per benchmark kind (BENCH_STATE overrides), so that two
# benches run side by side do not take each other's bed down.
state="${BENCH_STATE:-$REPO/.state/bench-${BENCH:-all}}"
testbed_down "$state" || true
rm -rf "$state"
trap 'testbed_down "$state" || true' EXIT
testbed_up "$state" "$guest_dir"
which="${BENCH:-all}"
if [[ $which == all || $which == operator ]]; then
  IRONVIRT_STATE="$state" "$REPO/target/debug/operator-bench" "$@"
fi
if [[ $which == all || $which == handler ]]; then
  IRONVIRT_STATE="$state" "$REPO/target/debug/handler-bench"
fi
if [[ $which == all || $which == images ]]; then
  IRONVIRT_STATE="$state" HANDLER_BENCH=images "$REPO/target/debug/handler-bench"
fi
if [[ $which == all || $which == api ]]; then
  # 50 consoles of one user: over the default per-user cap (16) on purpose,
  # to measure ironvirt-api's memory per session.
  API_BIN="$REPO/target/release/ironvirt-api" API_ARGS="--max-streams-per-user 64" start_api "$state" >/dev/null \
    || die "ironvirt-api did not start (log: $state/logs/ironvirt-api.log)."
  IRONVIRT_STATE="$state" "$REPO/target/debug/api-bench"
fi
if [[ $which == all || $which == ui ]]; then
  # The web console in headless Chromium (tests/tests/ui.rs with more
  # samples): first load, keypress to echo in the page, and the same echo
  # without a browser, direct and through ironctl ui's relay.
  cargo build --quiet --release -p ironvirt-cli --manifest-path "$REPO/Cargo.toml" || die "cargo build --release -p ironvirt-cli failed."
  [[ $which == all ]] || API_BIN="$REPO/target/release/ironvirt-api" start_api "$state" >/dev/null || die "ironvirt-api did not start (log: $state/logs/ironvirt-api.log)."
  IRONVIRT_STATE="$state" IRONVIRT_ETCD_BIN="$ETCD_BIN" IRONVIRT_K8S_BIN="$K8S_BIN" \
    IRONVIRT_IRONCTL="$REPO/target/release/ironctl" IRONVIRT_UI_SAMPLES="${UI_SAMPLES:-200}" \
    cargo test --quiet -p ironvirt-tests --test ui --manifest-path "$REPO/Cargo.toml" -- --nocapture 2>&1 \
    | grep -E '^(ui figures|vnc:)|test result|panicked|failed' || die "the web console benchmark failed."
fi
if [[ $which == density ]]; then
  # As many TCG guests as fit on one node (issue #20): DENSITY_VMS guests
  # (default 50) on a node of its own libvirtd, release handler and operator.
  IRONVIRT_STATE="$state" "$REPO/target/debug/density-bench"
fi
