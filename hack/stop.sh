#!/usr/bin/env bash
# make stop: stop every process the test bed started (run, test and run/stop
# check state), by pid.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
rc=0
for state in "${IRONVIRT_STATE:-$RUN_STATE}" "$TEST_STATE" "$RUNCHECK_STATE" "$REPO"/.state/bench* "$REPO/.state/chaos"; do
  if [[ -d "$state/pids" ]]; then
    log "stopping the test bed in $state"
    testbed_down "$state" || rc=1
  fi
done
exit $rc
