#!/usr/bin/env bash
# Builds every libFuzzer target (or the ones named) into fuzz/out/.
#   fuzz/build.sh                 # all five
#   fuzz/build.sh FuzzTraceLine   # one
# Release + -sanitize=fuzzer (coverage + libFuzzer's main) over IOMMUKit and the target; the
# scratch directory fuzz/out/.build is reused between runs, so rebuilds are incremental.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH="${SWIFT_BIN:-/opt/swift/usr/bin}:$PATH"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(FuzzVFIOIoctl FuzzTraceLine FuzzPageTableOps FuzzVirtioRequest FuzzScenario)
mkdir -p "$here/out"
for t in "${targets[@]}"; do
    echo "== building $t"
    swift build --package-path "$here" --scratch-path "$here/out/.build" -c release -j "${FUZZ_JOBS:-2}" \
        -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library --product "$t"
    cp "$(swift build --package-path "$here" --scratch-path "$here/out/.build" -c release --show-bin-path)/$t" "$here/out/$t"
done
echo "built: ${targets[*]} -> $here/out/"
