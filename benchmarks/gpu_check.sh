#!/usr/bin/env bash
# The GPU tests and the GPU benchmark (issue 15), for a machine with an NVIDIA GPU: about 5-8
# minutes (most of it exporting the random 0.5b checkpoint on the CPU).
#
#   bash benchmarks/gpu_check.sh [ONNXRUNTIME_GPU_WHEEL]
#
# Expects the project set up (the README's set-up command), nvcc (a CUDA toolkit, or
# $CUDACXX) and, for the PyTorch reference, torch with CUDA. Steps:
#   1. onnxruntime-gpu in place of onnxruntime (both are the one `onnxruntime` module): the wheel
#      given (benchmarks/gpu_wheel.py cuts one down for a machine without network), else from the
#      package index; skipped when CUDAExecutionProvider is already there;
#   2. the custom-op library rebuilt with SelectiveScan's CUDA kernel for this GPU
#      (MVGPT_CUDA_ARCHITECTURES, default native);
#   3. the tests marked gpu (tests.log): the CUDA kernel against float64 on the device, the
#      built-in model's fp16 package answering on CUDA;
#   4. benchmarks/bench_gpu.py: fp16 on the GPU against fp32 on the CPU per stage and on the
#      built-in model's held-out questions, speed against the PyTorch reference on the GPU, the
#      scan kernel per call (bench.log: JSON lines and tables).
# Logs go to $OUT (default /tmp/mvgpt-gpu). Put the plain onnxruntime back afterwards with
# `pip uninstall -y onnxruntime-gpu && pip install onnxruntime` (README: Install).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mvgpt-gpu}
mkdir -p "$OUT"
if ! nvidia-smi -L; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L failed)" >&2
  exit 1
fi
has_cuda_ep() {
  python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
}
if ! has_cuda_ep; then
  pip uninstall -y onnxruntime >/dev/null 2>&1
  if [ $# -ge 1 ]; then pip install --no-deps "$1"; else pip install onnxruntime-gpu; fi
  has_cuda_ep || { echo "gpu_check: onnxruntime still has no CUDAExecutionProvider" >&2; exit 1; }
fi
MVGPT_CUDA_ARCHITECTURES=${MVGPT_CUDA_ARCHITECTURES:-native} \
  python -m mvgpt.kernels.build --cuda --force || exit 1
status=0
timeout 240 python -m pytest -q -rs -m gpu tests/unit/test_cuda_kernel.py tests/export/test_fp16.py \
  2>&1 | tee "$OUT/tests.log" || status=1
timeout 420 python benchmarks/bench_gpu.py --work "$OUT/work" 2>&1 | tee "$OUT/bench.log" || status=1
exit $status
