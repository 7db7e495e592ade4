#!/usr/bin/env bash
# On the GPU machine (one call, < 10 min): the CUDA test files while mamba_ssm and causal-conv1d build in the
# background (or install from carried parts in .carry/wheels), then the tests that compare against
# mamba_ssm's compiled scan, and the Mamba-1 kernel benchmark. Logs and results go to $OUT.
#   bash benches/gpu/cuda_check.sh [bench_selective_scan.py options]
set -uo pipefail
source benches/gpu/env.sh
( bash benches/gpu/build_baselines.sh > $OUT/build-baselines.log 2>&1; echo "rc=$?" >> $OUT/build-baselines.log ) &
b=$!
t "building our kernels"; python3 -m ssm_offset.cli build-kernels 2>&1 | tail -2
for f in test_cuda_selective_scan test_cuda_ssd test_cuda_adapters; do
  t "$f"
  SSM_OFFSET_SSD_ERROR_LOG=$OUT/ssd-errors.json timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider \
    tests/$f.py -k "not mamba_ssm" 2>&1 | tee $OUT/$f.log | tail -6
done
t "waiting for baselines"; wait $b; tail -3 $OUT/build-baselines.log
t "tests against mamba_ssm's compiled scan"
timeout 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_selective_scan.py -k mamba_ssm 2>&1 \
  | tee $OUT/test_cuda_mamba_ssm.log | tail -6
t "Mamba-1 kernel bench"
timeout 110 python3 benches/bench_selective_scan.py --out $OUT/kernels-h100 "$@" 2>&1 | tail -20
t "done"
