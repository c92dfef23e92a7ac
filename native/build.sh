#!/usr/bin/env bash
# Build llama-cpp-python (it vendors llama.cpp) for one backend and install it into a venv.
#
#   native/build.sh VENV [cpu|metal|cuda]
#
# The wheel is built once per set of CMake flags into native/build/ and reused from there
# (pip's own cache is keyed by the download address, not by the flags, so it could hand a CPU
# build to a CUDA request). Extra CMake flags: ADED_CMAKE_ARGS; CUDA GPU arch: CUDA_ARCH (e.g. 90).
set -euo pipefail
venv=${1:?usage: native/build.sh VENV [cpu|metal|cuda]}
backend=${2:-cpu}
version=0.3.36   # keep equal to the pin in pyproject.toml
here=$(cd "$(dirname "$0")" && pwd)

. "$here/flags.sh"
flags="-DLLAVA_BUILD=OFF $(backend_flags "$backend")" || exit 2
key=$(printf '%s %s' "$version" "$flags" | sha1sum | cut -c1-12)
wheels="$here/build/wheels-$backend-$key"

if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $version for $backend ($flags); about 6 minutes on 2 cores" >&2
  mkdir -p "$wheels"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || sysctl -n hw.ncpu)" \
    "$venv/bin/pip" wheel --no-deps --no-cache-dir -w "$wheels" "llama-cpp-python==$version"
fi
"$venv/bin/pip" install --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
echo "$backend $flags" > "$venv/.llama-backend"
