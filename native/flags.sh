# The llama.cpp CMake flags of each backend, shared by native/build.sh (llama-cpp-python) and
# native/peers.sh (llama.cpp's own tools), so both are always built alike. Source it, then:
#   backend_flags cpu|metal|cuda      -> prints the flags (plus $ADED_CMAKE_ARGS), exit 2 if unknown
backend_flags() {
  local flags
  case "$1" in
    # LLAMAFILE off: its sgemm kernels make a position's logits depend on how many tokens share
    # the batch; ggml's own CPU kernels do not (for Q4_0/Q4_1 weights; K-quants still differ
    # slightly), so tree verification matches one-token decoding (see README, Exactness).
    cpu)   flags="-DLLAMA_CURL=OFF -DGGML_LLAMAFILE=OFF" ;;
    # GPU builds keep llamafile off too: layers left on the CPU (-ngl below the layer count)
    # then run the batch-invariant kernels; the GPU's own kernels are not batch-invariant
    # (measured on an H200: up to 2.7 logits between a batch of 1 and of 2-64; README, Exactness)
    metal) flags="-DLLAMA_CURL=OFF -DGGML_LLAMAFILE=OFF -DGGML_METAL=on" ;;
    cuda)  flags="-DLLAMA_CURL=OFF -DGGML_LLAMAFILE=OFF -DGGML_CUDA=on${CUDA_ARCH:+ -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH}" ;;
    *) echo "unknown backend '$1' (cpu, metal or cuda)" >&2; return 2 ;;
  esac
  # x86: ggml's AMX matmul (which -march=native turns on for Sapphire Rapids and newer Xeons)
  # segfaults on the first batch of more than one token on such machines (seen here with
  # llama-cpp-python 0.3.36 on an AMX_INT8 Xeon; llama.cpp issue #20824). Without AMX the
  # AVX-512 kernels run the same weights.
  case "$1:$(uname -m)" in
    cpu:x86_64|cuda:x86_64) flags="$flags -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" ;;
  esac
  echo "$flags ${ADED_CMAKE_ARGS:-}"
}
