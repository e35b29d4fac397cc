#!/usr/bin/env bash
# Test: `make run` then `make stop` leaves no test-bed process behind, and a
# second `make run` reuses the caches (builds nothing).
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"

state="$(mktemp -d "${TMPDIR:-/tmp}/ironvirt-runcheck.XXXXXX")"
out="$state.out"
libvirt_before=false
virsh -c qemu:///system version >/dev/null 2>&1 && libvirt_before=true

fail() {
  echo "check-run-stop: FAILED: $*" >&2
  IRONVIRT_STATE="$state" make -s -C "$REPO" stop >/dev/null 2>&1 || true
  exit 1
}

# Live (non-zombie) processes of this check's test bed.
leftovers() {
  local found=""
  # etcd, kube-apiserver and kube-controller-manager carry the state path in their arguments.
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
  for p in etcd kube-apiserver kube-controller-manager; do
    pgrep -r R,S,D -f "$state/" -a | grep -q "$p" || fail "$p is not running after make run"
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
[[ $libvirt_before == true ]] && echo "check-run-stop: note: libvirtd was already running before the check, so its stop was not checked"
rm -rf "$state" "$out"
echo "check-run-stop: ok"
