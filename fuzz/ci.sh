#!/usr/bin/env bash
# CI entry point: builds every fuzz target, then runs each for ${FUZZ_SECONDS:-60} seconds.
# Exits non-zero on a build failure or any finding (crash, broken invariant, leak, timeout);
# the reproducer is fuzz/out/TARGET-crash-* (or -leak-*, -timeout-*, -oom-*).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${FUZZ_SECONDS:-60}"
targets=(FuzzVFIOIoctl FuzzTraceLine FuzzPageTableOps FuzzVirtioRequest FuzzScenario)
"$here/build.sh" "${targets[@]}"
status=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    if ! "$here/run.sh" "$t" "$seconds" >"$here/out/$t.log" 2>&1; then
        echo "FINDING in $t (log: fuzz/out/$t.log):"
        tail -40 "$here/out/$t.log"
        status=1
    else
        grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$here/out/$t.log" | tail -2 || true
    fi
done
exit $status
