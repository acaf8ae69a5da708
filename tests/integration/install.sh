#!/usr/bin/env bash
# emiot tests - install.sh BUILD_DIR SOURCE_DIR CC [SANITIZE]: installs the
# build into a temporary prefix and builds examples/embed.c against it twice,
# as a user would: with pkg-config, and with CMake's find_package(emiot). Both
# programs must run and print the example's summary line.
set -euo pipefail
BUILD=$1 SRC=$2 CC=$3 SAN=${4:-}
WORK=$(mktemp -d /tmp/emiot-test-install-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FLAGS=""
[ -n "$SAN" ] && FLAGS="-fsanitize=$SAN"

cmake --install "$BUILD" --prefix "$WORK/prefix" >/dev/null
for f in include/emiot/emiot.h include/emiot/manager.h lib/pkgconfig/emiot.pc \
         lib/cmake/emiot/emiotConfig.cmake lib/cmake/emiot/emiotTargets.cmake; do
  [ -f "$WORK/prefix/$f" ] || { echo "not installed: $f"; exit 1; }
done
ls "$WORK/prefix/lib/libemiot.so" "$WORK/prefix/lib/libemiot.a" >/dev/null

export PKG_CONFIG_PATH="$WORK/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
"$CC" $FLAGS -Wall -Werror -o "$WORK/embed-pc" "$SRC/examples/embed.c" \
  $(pkg-config --cflags --libs emiot)
LD_LIBRARY_PATH="$WORK/prefix/lib" "$WORK/embed-pc" | grep -q "2 accepted, 2 rejected"

mkdir -p "$WORK/consumer"
cat >"$WORK/consumer/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(emiot 0.1 REQUIRED)
add_executable(embed "$SRC/examples/embed.c")
target_link_libraries(embed emiot::emiot)
CMAKE
CC="$CC" cmake -S "$WORK/consumer" -B "$WORK/consumer/build" -DCMAKE_PREFIX_PATH="$WORK/prefix" \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="$FLAGS" >/dev/null
cmake --build "$WORK/consumer/build" >/dev/null
LD_LIBRARY_PATH="$WORK/prefix/lib" "$WORK/consumer/build/embed" | grep -q "2 accepted, 2 rejected"
echo "install: pkg-config and CMake consumers built and ran"
