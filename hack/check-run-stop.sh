#!/usr/bin/env bash
# Test: `make run` then `make stop` leaves no test-bed process behind, and a
# second `make run` reuses the caches (builds nothing).
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

state="$RUNCHECK_STATE"
out="$REPO/.state/runcheck.out"
mkdir -p "$REPO/.state"
testbed_down "$state" || die "could not stop a previous run/stop check in $state"
rm -rf "$state"
libvirt_before=false
timeout 20 virsh -c qemu:///system version >/dev/null 2>&1 && libvirt_before=true

cleanup() {
  IRONVIRT_STATE="$state" make -s -C "$REPO" stop >/dev/null 2>&1 || true
}
trap 'cleanup; exit 130' INT TERM

fail() {
  echo "check-run-stop: FAILED: $*" >&2
  cleanup
  exit 1
}

# Live (non-zombie) processes of this check's test bed: the control plane
# carries the state path in its arguments; libvirtd and virtlogd are checked
# by name when no libvirtd ran before the check.
leftovers() {
  local found=""
  found+="$(pgrep -a -r R,S,D,T -f "$state/" || true)"
  if [[ $libvirt_before == false ]]; then
    found+="$(pgrep -a -r R,S,D,T -x libvirtd || true)"
    found+="$(pgrep -a -r R,S,D,T -x virtlogd || true)"
  fi
  echo "$found"
}

for round in 1 2; do
  t0=$(date +%s)
  IRONVIRT_STATE="$state" make -s -C "$REPO" run >"$out" 2>&1 || { cat "$out" >&2; fail "make run (round $round) failed"; }
  t1=$(date +%s)
  grep -q "ironvirt test bed is up" "$out" || { cat "$out" >&2; fail "make run printed no ready line"; }
  for bin in "$ETCD_BIN/etcd" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager"; do
    pgrep -r R,S,D -f "^$bin .*$state/" >/dev/null || fail "$(basename "$bin") is not running after make run"
  done
  if [[ $round == 2 ]] && grep -q '^==> building' "$out"; then
    cat "$out" >&2
    fail "the second make run built something instead of using the caches"
  fi
  IRONVIRT_STATE="$state" make -s -C "$REPO" stop >/dev/null 2>&1 || fail "make stop failed"
  left="$(leftovers)"
  [[ -z "$left" ]] || fail "processes left after make stop (round $round):
$left"
  echo "check-run-stop: round $round: make run took $((t1 - t0))s; make stop left no process"
done
if [[ $libvirt_before == true ]]; then
  echo "check-run-stop: note: libvirtd was already running before the check, so its stop was not checked"
fi
rm -rf "$state" "$out"
echo "check-run-stop: ok"
