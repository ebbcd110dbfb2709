#!/usr/bin/env bash
# Renders the HTML pages of `iommu-sim compare --html` and `iommu-sim run --html` in headless
# Chromium and checks that every plot drew: the page's own check (on load, every svg.plot has a
# non-empty bounding box and at least one data mark, and no script error happened) must report
# PLOTS-OK in the DOM Chromium dumps, and Chromium must log no console error. Saves a
# screenshot of each page and prints its path.
#
# Usage: Tests/Browser/check-pages.sh [PATH-TO-iommu-sim] [OUTPUT-DIR]
#   default binary: the debug build's (`swift build --show-bin-path`); default output: a new
#   temporary directory (kept, so the screenshots can be looked at).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-$(swift build --show-bin-path)/iommu-sim}"
out="${2:-$(mktemp -d "${TMPDIR:-/tmp}/iommu-sim-pages.XXXXXX")}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
    echo "check-pages: no chromium on PATH (install it: apt-get install -y chromium)" >&2
    exit 1
fi
[ -x "$bin" ] || { echo "check-pages: $bin is not an executable (build iommu-sim first)" >&2; exit 1; }

# The pages: a comparison (three policies, three latencies) and one run with page faults, one without.
"$bin" compare strict-vs-lazy --policies strict,lazy,single-queue --invalidation-ns 500,2000,8000 --html "$out/compare.html" >"$out/compare.txt"
"$bin" run sva-faults --html "$out/run-sva-faults.html" >"$out/run-sva-faults.txt"
"$bin" run tour --html "$out/run-tour.html" >"$out/run-tour.txt"

status=0
for page in compare run-sva-faults run-tour; do
    html="$out/$page.html"
    url="file://$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
    flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-extensions --hide-scrollbars
           --user-data-dir="$out/profile" --enable-logging=stderr --v=0)
    # The DOM after load (the page's check has run by then) with the console on stderr.
    timeout 120 "$browser" "${flags[@]}" --virtual-time-budget=5000 --dump-dom "$url" >"$out/$page.dom" 2>"$out/$page.log" || true
    timeout 120 "$browser" "${flags[@]}" --window-size=1400,2400 --screenshot="$out/$page.png" "$url" >/dev/null 2>>"$out/$page.log" || true
    result="$(sed -n '/<pre id="check">/,/<\/pre>/p' "$out/$page.dom")"
    plots="$(grep -o '<svg class="plot"' "$html" | wc -l)"
    if ! grep -q 'PLOTS-OK' <<<"$result"; then
        echo "FAILED: $page: the page's check did not pass:" >&2
        echo "$result" >&2
        status=1
    elif grep -Eq 'Uncaught|CONSOLE\([0-9]+\).*[Ee]rror|:ERROR:CONSOLE' "$out/$page.log"; then
        echo "FAILED: $page: console errors:" >&2
        grep -E 'Uncaught|CONSOLE' "$out/$page.log" >&2
        status=1
    elif [ ! -s "$out/$page.png" ]; then
        echo "FAILED: $page: no screenshot" >&2
        status=1
    else
        echo "ok: $page ($plots plots) $(grep -o 'PLOTS-OK [0-9]* plots' <<<"$result")"
    fi
    echo "   screenshot: $out/$page.png"
done
rm -rf "$out/profile"
exit $status
