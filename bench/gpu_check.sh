#!/usr/bin/env bash
# One GPU session's checks in one command: the GPU tests, then bench/decode.py with the
# arguments given; logs and JSON (and the plot) land in $OUT (default ./gpu_out).
#   bash bench/gpu_check.sh --layers 4 --precision bf16 int4 --batch 1 64 --context 512
#   GPU_TESTS=0 bash bench/gpu_check.sh ...     # the benchmark only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The project without its dependencies: the GPU machine has torch, triton, safetensors, tiktoken.
python3 -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
status=0
if [ "${GPU_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 600 tests/services/inference/kernels \
    tests/services/inference/test_engine_cuda.py tests/shared/test_model_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
  status=${PIPESTATUS[0]}
fi
python3 bench/decode.py --out "$OUT/decode.json" --plot "$OUT/decode.png" "$@" 2> "$OUT/decode.log" | tail -c 3000
bench=${PIPESTATUS[0]}
tail -5 "$OUT/decode.log"
echo "gpu tests: exit $status; bench: exit $bench"
[ "$status" = 0 ] && [ "$bench" = 0 ]
