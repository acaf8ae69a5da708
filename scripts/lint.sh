#!/usr/bin/env bash
# emiot - lint.sh BUILD_DIR [FILE...]: the checks of `make lint`.
#
#   1. clang-format in check mode on every tracked *.c and *.h;
#   2. clang-tidy (.clang-tidy at the root) on the tracked *.c of src/ and
#      programs/, with the flags of BUILD_DIR/compile_commands.json, which
#      every CMake configure of emiot writes;
#   3. cppcheck (warning, performance, portability) on the same files.
#
# With FILEs, only those (of the tracked files) are checked.
# Every stage runs even when an earlier one failed, so one run shows all the
# findings. Exits 0 when there are none, 1 when there is any, 2 on misuse
# (no build directory, a tool missing: scripts/deps.sh installs them).
# JOBS (default: nproc) sets the parallelism.
set -uo pipefail

usage() {
    echo "usage: $0 BUILD_DIR [FILE...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "$1" 2>/dev/null && pwd)" || {
    echo "lint: no build directory '$1' (configure with cmake first)" >&2
    exit 2
}
shift
# FILEs are taken relative to the current directory, as a shell user types them.
only=()
for f in "$@"; do
    abs="$(realpath -m -- "$f")"
    only+=("${abs#"$root"/}")
done
db="$build/compile_commands.json"
if [ ! -f "$db" ]; then
    echo "lint: $db missing (configure with cmake first)" >&2
    exit 2
fi
for tool in clang-format clang-tidy cppcheck git; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "lint: $tool not found (run scripts/deps.sh)" >&2
        exit 2
    fi
done
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
cd "$root" || exit 2

# Tracked files only: what is linted is what is committed (git add a new file
# before linting it). Paths are NUL-separated throughout.
mapfile -d '' all_sources < <(git ls-files -z -- '*.c' '*.h')
mapfile -d '' lib_sources < <(git ls-files -z -- 'src/*.c' 'programs/*.c')
if [ ${#only[@]} -gt 0 ]; then
    # Keep the tracked files that were asked for.
    keep() {
        local f g
        for f in "$@"; do
            for g in "${only[@]}"; do
                if [ "$f" = "$g" ]; then
                    printf '%s\0' "$f"
                    break
                fi
            done
        done
    }
    mapfile -d '' all_sources < <(keep "${all_sources[@]}")
    mapfile -d '' lib_sources < <(keep "${lib_sources[@]}")
fi
if [ ${#all_sources[@]} -eq 0 ]; then
    echo "lint: no tracked sources to check (is $root a git checkout? are the FILEs tracked?)" >&2
    exit 2
fi

failed=()

# --- 1. clang-format -------------------------------------------------------
echo "lint: clang-format (${#all_sources[@]} files)"
if ! printf '%s\0' "${all_sources[@]}" |
    xargs -0 -r clang-format --dry-run -Werror --style=file; then
    failed+=(clang-format)
fi

# --- 2. clang-tidy ---------------------------------------------------------
# Only files the build knows: one missing from compile_commands.json was added
# after the last configure, and is itself a finding.
tidy_files=()
for f in "${lib_sources[@]}"; do
    if grep -qF "\"$root/$f\"" "$db"; then
        tidy_files+=("$f")
    else
        echo "lint: $f is not in $db (re-run cmake, or is it built at all?)"
        missing_from_db=1
    fi
done
if [ -n "${missing_from_db:-}" ]; then
    failed+=("compile-database")
fi
echo "lint: clang-tidy (${#tidy_files[@]} files, $jobs jobs)"
if [ ${#tidy_files[@]} -gt 0 ]; then
    # "N warnings generated." counts warnings from system headers that the
    # header filter then hides; it is noise, the findings themselves are kept.
    if ! printf '%s\0' "${tidy_files[@]}" |
        xargs -0 -r -n 1 -P "$jobs" clang-tidy -p "$build" --quiet \
            --extra-arg=-Wno-unknown-warning-option 2> >(grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$' >&2); then
        failed+=(clang-tidy)
    fi
fi

# --- 3. cppcheck -----------------------------------------------------------
echo "lint: cppcheck (${#lib_sources[@]} files)"
if [ ${#lib_sources[@]} -gt 0 ]; then
    mkdir -p "$build/cppcheck"
    if ! cppcheck --quiet --enable=warning,performance,portability --error-exitcode=1 \
        --inline-suppr --std=c11 --library=posix -j "$jobs" \
        --cppcheck-build-dir="$build/cppcheck" \
        -I include -I src --suppress=missingIncludeSystem \
        --template='{file}:{line}:{column}: {severity}: {message} [{id}]' \
        "${lib_sources[@]}"; then
        failed+=(cppcheck)
    fi
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "lint: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "lint: clean"
