#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 60) on a copy of its committed seed corpus.
#   fuzz/run.sh FuzzVFIOIoctl 60 [extra libFuzzer flags]
# New corpus entries go to fuzz/out/corpus/TARGET (git-ignored); a crash leaves
# fuzz/out/crash-* / leak-* / timeout-* and exits non-zero. Reproduce with
#   fuzz/out/TARGET fuzz/out/crash-...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags]}"
seconds="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
[ -x "$here/out/$target" ] || "$here/build.sh" "$target"
work="$here/out/corpus/$target"
mkdir -p "$work"
# Scenario files are longer than one request or trace line (examples/server.yaml is 7.4 KB).
max_len=4096
[ "$target" = FuzzScenario ] && max_len=8192
dict=()
[ -f "$here/dict/$target.dict" ] && dict=(-dict="$here/dict/$target.dict")
# Let libFuzzer (not the Swift runtime backtracer) handle the trap of a failed check, so the
# input is saved.
export SWIFT_BACKTRACE=enable=no
cd "$here/out"
exec "./$target" "$work" "$here/corpus/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$here/out/$target-" "${dict[@]}" "$@"
