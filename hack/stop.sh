#!/usr/bin/env bash
# make stop: stop every process the test bed started (run and test state), by pid.
set -euo pipefail
HACK="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$HACK/lib.sh"
for state in "${IRONVIRT_STATE:-$RUN_STATE}" "$TEST_STATE"; do
  if [[ -d "$state/pids" ]]; then
    log "stopping the test bed in $state"
    testbed_down "$state"
  fi
done
