#!/usr/bin/env bash
# Builds the `cuda` feature on a machine without CUDA installed (how the H200 run in the README
# was built): CUDA 13.0's compiler and libraries from pip wheels, a link stub for the driver's
# libcuda (the real one is loaded where the binary runs), code for compute capability 9.0.
#   scripts/build_cuda.sh [TARGET_DIR] [extra cargo args, e.g. --test tensor_ops]
# 13.0 matches the driver seen on the lent machine (580); a newer nvcc writes PTX it refuses.
set -euo pipefail
ROOT=${CUDA_WHEELS:-/opt/cuda13}
TARGET=${1:-target-cuda}; shift || true
if [ ! -x "$ROOT/x/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip download -q --no-deps -d "$ROOT/wheels" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-curand" "nvidia-cublas==13.0.*"
  for w in "$ROOT"/wheels/*.whl; do unzip -qo "$w" -d "$ROOT/x"; done
  chmod +x "$ROOT"/x/nvidia/cu13/bin/* "$ROOT"/x/nvidia/cu13/nvvm/bin/*
fi
export CUDA_HOME=$ROOT/x/nvidia/cu13 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export PATH=$CUDA_HOME/bin:$PATH LIBRARY_PATH=$CUDA_HOME/lib
LIB=$CUDA_HOME/lib
for n in cudart nvrtc curand cublas cublasLt; do ln -sf "$(ls "$LIB"/lib$n.so.* | head -1)" "$LIB/lib$n.so"; done
cargo fetch -q  # cudarc's source, read for the stub below
if [ ! -f "$LIB/libcuda.so" ]; then
  # Every driver entry point cudarc declares, as a stub (SONAME libcuda.so.1) to link against.
  grep -ohE "^pub unsafe fn cu[A-Za-z0-9_]+" ~/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs \
    | sed 's/pub unsafe fn //' | sort -u | awk '{print "int "$1"(void){return 999;}"}' > "$ROOT/stub.c"
  cc -shared -fPIC -o "$LIB/libcuda.so" "$ROOT/stub.c" -Wl,-soname,libcuda.so.1
fi
cargo build --release --features cuda --target-dir "$TARGET" "$@"
