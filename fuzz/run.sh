#!/usr/bin/env bash
# Runs one fuzz target under libFuzzer with AddressSanitizer for SECONDS seconds:
#   fuzz/run.sh TARGET SECONDS [libFuzzer options...]
# Targets: vtd-tables vtd-invalidation vtd-page-requests scenario-yaml iommufd-ioctl
#          smmuv3-tables smmuv3-commands smmuv3-priq   (Sources/Fuzzing/FuzzTarget.swift)
# The seed corpus is fuzz/corpus/TARGET (read only); what the run finds goes to
# .build-fuzz/corpus/TARGET, crashes to .build-fuzz/crashes/TARGET. A crash input, once the
# bug is fixed, is kept in fuzz/regressions/TARGET, which the tests replay.
# Environment: FUZZ_JOBS=N runs N workers (-fork), FUZZ_NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer options]}"
seconds="${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer options]}"
shift 2
[[ -d "fuzz/corpus/$target" ]] || { echo "no such target: $target (fuzz/corpus/$target missing)" >&2; exit 2; }
if [[ -z "${FUZZ_NO_BUILD:-}" ]]; then
    # --sanitize=fuzzer makes SwiftPM link libFuzzer's main; -Xswiftc -sanitize=fuzzer
    # instruments every module for coverage (SwiftPM passes it to the link step only).
    swift build -c release --package-path fuzz --scratch-path .build-fuzz --product iommu-fuzz \
        --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer -Xcc -fsanitize=fuzzer-no-link \
        2> >(grep -v "warning: Cannot export" >&2)
fi
work=".build-fuzz/corpus/$target"
crashes=".build-fuzz/crashes/$target"
mkdir -p "$work" "$crashes"
extra=()
[[ -n "${FUZZ_JOBS:-}" ]] && extra+=("-fork=$FUZZ_JOBS" "-ignore_crashes=0")
[[ -f "fuzz/dictionaries/$target.dict" ]] && extra+=("-dict=fuzz/dictionaries/$target.dict")
export IOMMU_FUZZ_TARGET="$target" SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0}"
exec .build-fuzz/release/iommu-fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "${extra[@]}" "$@" "$work" "fuzz/corpus/$target"
