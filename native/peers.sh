#!/usr/bin/env bash
# Build llama.cpp's own peer tools from the llama.cpp vendored in the llama-cpp-python sdist,
# so the benchmark can compare against them on the same llama.cpp source and CPU flags:
#
#   native/peers.sh [OUTDIR] [cpu|metal|cuda]        (default: native/build/peers, $BACKEND or cpu)
#
# Binaries land in OUTDIR/bin: llama-lookup (prompt n-gram lookup), llama-speculative (draft
# model), llama-speculative-simple, and llama-completion (plain generation, the same-binary
# baseline; in this llama.cpp `llama-cli` is the chat UI and needs the server build).
# Statically linked, so the folder can be moved. Cached: nothing is rebuilt when OUTDIR/bin
# already holds every binary built with the same flags (OUTDIR/flags). The backend flags are
# those of native/build.sh; extra CMake flags: ADED_CMAKE_ARGS; CUDA GPU arch: CUDA_ARCH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=0.3.36   # keep equal to the pin in pyproject.toml and native/build.sh

out=$here/build/peers
backend=${BACKEND:-cpu}
case "${1:-}" in
  cpu|metal|cuda) backend=$1 ;;
  "") ;;
  *) out=$1; backend=${2:-$backend} ;;
esac
mkdir -p "$out" && out=$(cd "$out" && pwd)

# The backend flags of native/build.sh (native/flags.sh), without llama-cpp-python's own
# LLAVA_BUILD. Tests, server, the unified app binary and HTTPS are not needed for these tools.
. "$here/flags.sh"
flags=$(backend_flags "$backend") || exit 2
layout="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_COMMON=ON \
-DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF"
tools="llama-lookup llama-speculative llama-speculative-simple llama-completion"

have_all() {
  for t in $tools; do [ -x "$out/bin/$t" ] || return 1; done
  [ "$(cat "$out/flags" 2>/dev/null)" = "$version $backend $flags" ]
}
if have_all; then
  echo "native/peers.sh: $out/bin is up to date ($backend $flags)" >&2
  exit 0
fi

key=$(printf '%s %s' "$version" "$flags" | sha1sum | cut -c1-12)
sdist_dir=$here/build/sdist
src=$here/build/peers-src/llama_cpp_python-$version/vendor/llama.cpp
bld=$here/build/peers-build-$backend-$key

if [ ! -f "$src/CMakeLists.txt" ]; then
  tarball=$sdist_dir/llama_cpp_python-$version.tar.gz
  if [ ! -f "$tarball" ]; then
    pip=$here/../.venv/bin/pip
    [ -x "$pip" ] || pip="python3 -m pip"
    $pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$sdist_dir"
  fi
  rm -rf "$here/build/peers-src" && mkdir -p "$here/build/peers-src"
  tar -xzf "$tarball" -C "$here/build/peers-src" "llama_cpp_python-$version/vendor/llama.cpp"
fi

jobs=$(nproc 2>/dev/null || sysctl -n hw.ncpu)
echo "native/peers.sh: building $tools for $backend ($flags); about 5 minutes on 2 cores" >&2
# shellcheck disable=SC2086
cmake -S "$src" -B "$bld" $layout $flags
# shellcheck disable=SC2086
cmake --build "$bld" --config Release --target $tools -j"$jobs"

rm -rf "$out/bin.tmp" && mkdir -p "$out/bin.tmp"
for t in $tools; do cp "$bld/bin/$t" "$out/bin.tmp/"; done
rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
echo "$version $backend $flags" > "$out/flags"
echo "native/peers.sh: installed $tools into $out/bin" >&2
