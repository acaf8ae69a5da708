#!/usr/bin/env bash
# emiot - fuzz.sh BUILD_DIR SECONDS: runs every libFuzzer target for a bounded
# time (the job behind `make fuzz`).
#
# Each BUILD_DIR/fuzz/fuzz_<name> runs for SECONDS against a scratch copy of
# fuzz/corpus/<name>/ (new inputs it finds stay in the scratch directory; the
# repository's seed corpus is never written). Every target runs even after
# one fails; the script exits 1 if any crashed, leaked, timed out or found an
# assertion, and keeps that target's scratch directory, with the crashing
# input, for reproduction:  BUILD_DIR/fuzz/fuzz_<name> <crash-file>.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build=$1
seconds=$2
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

shopt -s nullglob
targets=()
for bin in "$build"/fuzz/fuzz_*; do
  [ -f "$bin" ] && [ -x "$bin" ] && targets+=("$bin")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz.sh: no fuzz targets in $build/fuzz (configure with -DEM_BUILD_FUZZ=ON)" >&2
  exit 1
fi

scratch_root=$(mktemp -d "${TMPDIR:-/tmp}/emiot-fuzz.XXXXXX")
keep=0
cleanup() {
  if [ "$keep" -eq 0 ]; then
    rm -rf "$scratch_root"
  fi
}
trap cleanup EXIT

# Sanitizer reports end the run with a non-zero status (libFuzzer's default).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
for bin in "${targets[@]}"; do
  name=$(basename "$bin")
  corpus_name=${name#fuzz_}
  work="$scratch_root/$corpus_name"
  mkdir -p "$work/corpus" "$work/artifacts"
  if [ -d "$root/fuzz/corpus/$corpus_name" ]; then
    cp -R "$root/fuzz/corpus/$corpus_name/." "$work/corpus/"
  fi
  echo "== $name: ${seconds}s, $(find "$work/corpus" -type f | wc -l) seed inputs"
  # max_len covers EM_PAYLOAD_MAX (16384) so the size limit itself is fuzzed.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=17000 \
       -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" \
       >"$work/log.txt" 2>&1; then
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$work/log.txt" | tail -n 2 || true
  else
    failed+=("$name")
    keep=1
    echo "!! $name FAILED; last lines of $work/log.txt:" >&2
    tail -n 40 "$work/log.txt" >&2
    for a in "$work"/artifacts/*; do
      echo "!! reproduce: $bin $a" >&2
    done
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]} (scratch kept in $scratch_root)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each, no failures"
