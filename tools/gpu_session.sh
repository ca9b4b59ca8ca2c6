#!/usr/bin/env bash
# Build, check and benchmark the CUDA backend on a GPU machine that lacks bvllm's Debian
# libraries (the lent GPU machine has nvcc, cuBLAS/cuDNN and PyTorch, but no glog, gflags,
# GoogleTest, OpenBLAS or nlohmann-json, and no network).
#
#   tools/gpu_session.sh fetch    # here, with apt: downloads those .debs into .device-debs/
#   tools/gpu_session.sh run      # there (with .device-debs carried over): unpack, build,
#                                 # run the gpu-labelled tests and the GPU benchmarks, PyTorch's
#                                 # beside them; logs and JSON lines go to $OUT (or ./gpu-out)
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

debs=(libgoogle-glog-dev libgoogle-glog0v6 libgflags-dev libgflags2.2 libgtest-dev libunwind-dev libunwind8
      libopenblas-dev libopenblas-openmp-dev libopenblas0-openmp libopenblas0 nlohmann-json3-dev libgomp1)

case "${1:-}" in
  fetch)
    mkdir -p .device-debs
    (cd .device-debs && apt-get download "${debs[@]}")
    du -sh .device-debs
    ;;
  run)
    out=${OUT:-$PWD/gpu-out}
    mkdir -p "$out"
    prefix=$PWD/.device-prefix
    rm -rf "$prefix" && mkdir -p "$prefix"
    for d in .device-debs/*.deb; do dpkg -x "$d" "$prefix"; done
    lib=$prefix/usr/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH=$lib:$lib/openblas-openmp:${LD_LIBRARY_PATH:-}
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DBVLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
      -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_LIBRARY_PATH="$lib/openblas-openmp;$lib" \
      -DOPENBLAS_INCLUDE_DIR="$prefix/usr/include/x86_64-linux-gnu/openblas-openmp" \
      -DOPENBLAS_LIBRARY="$lib/openblas-openmp/libopenblas.so.0" 2>&1 | tee "$out/configure.log" | tail -3
    cmake --build build-gpu -j"$(nproc)" 2>&1 | tee "$out/build.log" | tail -3
    ctest --test-dir build-gpu -L gpu --output-on-failure 2>&1 | tee "$out/gpu-tests.log" | tail -15
    build-gpu/tests/cuda_parity_test 2>&1 | tee "$out/cuda_parity.log" | tail -5 || true
    build-gpu/bin/bvllm_bench --case=gpu --iters=10 2>&1 | tee "$out/bench-bvllm.jsonl"
    python3 tests/reference/bench_torch_gpu.py --iters 10 2>&1 | tee "$out/bench-torch.jsonl"
    ;;
  *)
    echo "usage: tools/gpu_session.sh fetch|run" >&2
    exit 2
    ;;
esac
