#!/usr/bin/env bash
# On the GPU machine, from a copy of the repo (one call, ~9 min): build mamba_ssm + causal-conv1d (the
# model-level baselines) in the background; meanwhile build our Mamba-1 kernels and test the Mamba-2 CUDA
# path against the unpacked mamba_ssm source (its Triton SSD, no CUDA build: tests the import fallback),
# the adapters on the fast path, and benchmark the SSD; then the model-level benchmark.
# Stages are time-boxed to fit one 10-minute call. Logs and results go to $OUT. Usage: bash benches/gpu/cuda2.sh [skip-model]
set -uo pipefail
source benches/gpu/env.sh
if [ "${1:-}" != "skip-model" ]; then
  ( BUILD_JOBS=6 bash benches/gpu/build_baselines.sh > $OUT/build-baselines.log 2>&1; echo "rc=$?" >> $OUT/build-baselines.log ) &
  b=$!
fi
SRC="PYTHONPATH=$PWD/python:/tmp/msrc:/tmp/site"
t "building our kernels"
env $SRC python3 -m ssm_offset.cli build-kernels 2>&1 | tail -3
t "SSD tests"
env $SRC SSM_OFFSET_SSD_ERROR_LOG=$OUT/ssd-errors.json timeout 170 python3 -m pytest -v --tb=short tests/test_cuda_ssd.py -p no:cacheprovider 2>&1 | tee $OUT/tests-ssd.log | tail -15
t "SSD bench"
env $SRC timeout 150 python3 benches/bench_ssd.py --max-configs 3 --out $OUT/ssd-h100 2>&1 | tail -12
t "adapter tests"
env $SRC timeout 100 python3 -m pytest -v --tb=short tests/test_cuda_adapters.py -p no:cacheprovider 2>&1 | tee $OUT/tests-adapters.log | tail -15
env $SRC python3 -m ssm_offset.cli info 2>&1 | grep -i -A2 kernel | head -5
if [ "${1:-}" != "skip-model" ]; then
  t "waiting for baselines"; wait $b; tail -4 $OUT/build-baselines.log
  t "model bench"
  PYTHONPATH=$PWD/python:/tmp/site timeout 120 python3 benches/bench_model.py --out $OUT/model-h100 2>&1 | tee $OUT/model.log | tail -45
fi
t "done"
