#!/usr/bin/env bash
# One GPU session's checks in one command: the GPU tests, then bench/decode.py with the
# arguments given; logs and JSON (and the plot) land in $OUT (default ./gpu_out).
#   bash bench/gpu_check.sh --layers 4 --precision bf16 int4 --batch 1 64 --context 512
#   GPU_TESTS=0 bash bench/gpu_check.sh ...     # the benchmark only
#   DECODE=0 bash bench/gpu_check.sh            # the tests only
#   GEMM_TUNE="--precision int4 int4g128 --tokens 1 --mode fast" bash ...   # also bench/gemm_tune.py
# On two GPUs or more it also runs the multi-rank GPU tests (WORLD_TESTS=0: not) and
# bench/allreduce.py (ALLREDUCE=0: not), and, for each
# ';'-separated argument list in WORLD_RUNS, `mpiexec -n 2 bench/decode.py --world 2 ARGS`:
#   WORLD_RUNS="--layers 40 --precision int8 --layouts tp2 ep2; --layers 40 --precision bf16 int4" bash ...
# Packages the GPU machine's image lacks travel as wheels in .whl/ (installed first, when there):
# the mpich wheel into a prefix of its own (mpiexec, libmpi), the rest onto PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/mpi .whl/mpich-*.whl
  others=$(ls .whl/*.whl | grep -v /mpich-)
  [ -z "$others" ] || python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $others
  site=$(ls -d /tmp/mpi/lib/python3*/site-packages)
  export PATH=/tmp/mpi/bin:$PATH LD_LIBRARY_PATH=/tmp/mpi/lib:${LD_LIBRARY_PATH:-} \
    PYTHONPATH=/tmp/site:$site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project without its dependencies: the GPU machine has torch, triton, safetensors, tiktoken.
python3 -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
gpus=$(nvidia-smi -L | wc -l)
status=0
if [ "${GPU_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 600 tests/services/inference/kernels \
    tests/services/inference/test_engine_cuda.py tests/shared/test_model_cuda.py \
    tests/services/builder/test_build_tuning.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
  status=${PIPESTATUS[0]}
fi
if [ "$gpus" -ge 2 ] && [ "${WORLD_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider --timeout 600 tests/services/inference/test_world_run.py -k two_gpus \
    2>&1 | tee "$OUT/gpu_world_tests.log" | tail -25
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
bench=0
if [ "$gpus" -ge 2 ] && [ "${ALLREDUCE:-1}" = 1 ]; then
  mpiexec -n 2 python3 bench/allreduce.py --out "$OUT/allreduce.json" 2> "$OUT/allreduce.log" | tail -c 1500
  [ "${PIPESTATUS[0]}" = 0 ] || { bench=1; tail -20 "$OUT/allreduce.log"; }
fi
if [ "$gpus" -ge 2 ]; then
  IFS=';' read -ra runs <<< "${WORLD_RUNS:-}"
  for i in "${!runs[@]}"; do
    # shellcheck disable=SC2086  # each run's arguments split on spaces
    mpiexec -n 2 python3 bench/decode.py --world 2 --out "$OUT/decode_world2_$i.json" ${runs[$i]} \
      2> "$OUT/decode_world2_$i.log" | tail -c 2500
    [ "${PIPESTATUS[0]}" = 0 ] || { bench=1; tail -30 "$OUT/decode_world2_$i.log"; }
  done
fi
if [ -n "${GEMM_TUNE:-}" ]; then  # e.g. GEMM_TUNE="--precision int4 int4g128 --tokens 1 --mode fast"
  # shellcheck disable=SC2086  # the arguments split on spaces
  python3 bench/gemm_tune.py --out "$OUT/gemm_tune.json" $GEMM_TUNE 2> "$OUT/gemm_tune.log" | tail -c 300
  [ "${PIPESTATUS[0]}" = 0 ] || bench=1
  tail -12 "$OUT/gemm_tune.log"
fi
if [ "${DECODE:-1}" = 1 ]; then
  python3 bench/decode.py --out "$OUT/decode.json" --plot "$OUT/decode.png" "$@" 2> "$OUT/decode.log" | tail -c 3000
  [ "${PIPESTATUS[0]}" = 0 ] || bench=1
  tail -5 "$OUT/decode.log"
fi
echo "gpu tests: exit $status; benches: exit $bench"
[ "$status" = 0 ] && [ "$bench" = 0 ]
