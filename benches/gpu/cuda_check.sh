#!/usr/bin/env bash
# On the GPU machine, in two calls on one warm machine (each < 10 min):
#   bash benches/gpu/cuda_check.sh tests   start building mamba_ssm + causal-conv1d in a detached session (it
#                                          outlives the call; or install carried parts from .carry/wheels),
#                                          then the CUDA test files and the Mamba-2 SSD benchmark
#   bash benches/gpu/cuda_check.sh bench   wait for the baselines (RETURN_WHEELS=1: their wheels back as xz parts), the
#                                          tests against mamba_ssm's compiled scan, the Mamba-1 kernel benchmark
#                                          and kernel times, and the model-level benchmark
# Logs and results go to $OUT. Tests stop on SIGINT at their time box, so pytest still prints its summary.
set -uo pipefail
source benches/gpu/env.sh
STAGE=${1:-tests}
if [ "$STAGE" = tests ]; then
  if [ ! -e /tmp/baselines.started ]; then
    touch /tmp/baselines.started
    setsid bash -c "BUILD_JOBS=${BUILD_JOBS:-5} PARTS=/tmp/wheelparts bash benches/gpu/build_baselines.sh > /tmp/build-baselines.log 2>&1; echo rc=\$? >> /tmp/build-baselines.log; touch /tmp/baselines.done" < /dev/null > /dev/null 2>&1 &
  fi
  t "building our kernels"; python3 -m ssm_offset.cli build-kernels 2>&1 | tail -2
  t "test_cuda_selective_scan"
  SSM_OFFSET_ERROR_LOG=$OUT/errors.json timeout -s INT 150 python3 -m pytest -q --tb=short -p no:cacheprovider \
    tests/test_cuda_selective_scan.py -k "not mamba_ssm" 2>&1 \
    | tee $OUT/test_cuda_selective_scan.log | tail -6
  t "test_cuda_ssd, test_ssd_interpret"
  SSM_OFFSET_SSD_ERROR_LOG=$OUT/ssd-errors.json timeout -s INT 300 python3 -m pytest -q -rf --tb=line -p no:cacheprovider \
    tests/test_cuda_ssd.py tests/test_ssd_interpret.py 2>&1 | tee $OUT/test_cuda_ssd.log | tail -12
  for tp in "" 1; do  # the default rule (channel-parallel at these shapes), then the time-parallel kernels forced
    t "test_cuda_adapters${tp:+ (SSM_OFFSET_TIME_PARALLEL=$tp)}"
    SSM_OFFSET_TIME_PARALLEL=$tp timeout -s INT 100 python3 -m pytest -q --tb=short -p no:cacheprovider \
      tests/test_cuda_adapters.py 2>&1 | tee $OUT/test_cuda_adapters$tp.log | tail -6
  done
  t "Mamba-2 SSD bench"
  timeout 180 python3 benches/bench_ssd.py --max-configs 4 --rounds 2 --out $OUT/ssd-h100 2>&1 | tail -14
  t "baselines: $(tail -2 /tmp/build-baselines.log 2>/dev/null | tr '\n' ' ')"
else
  t "waiting for baselines"
  while [ ! -e /tmp/baselines.done ]; do sleep 5; done
  tail -4 /tmp/build-baselines.log
  # the device returns at most 8 files and the wheel parts are 5: only on request (RETURN_WHEELS=1), and then
  # the benchmarks' own files crowd out
  [ "${RETURN_WHEELS:-0}" = 1 ] && cp /tmp/wheelparts/baselines.tar.xz.part* $OUT/ 2>/dev/null
  t "tests against mamba_ssm's compiled scan"
  timeout -s INT 120 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_selective_scan.py -k mamba_ssm 2>&1 \
    | tee $OUT/test_cuda_mamba_ssm.log | tail -6
  t "Mamba-1 kernel bench"
  timeout 120 python3 benches/bench_selective_scan.py --out $OUT/kernels-h100 2>&1 | tail -20
  t "Mamba-1 kernel time, both families and mamba_ssm"
  timeout 120 python3 benches/gpu/kernel_times.py > $OUT/kernel-times.log 2>&1; grep kernels: $OUT/kernel-times.log
  t "model bench"
  timeout 200 python3 benches/bench_model.py --out $OUT/model-h100 2>&1 | tee $OUT/model.log | tail -12
fi
t "done"
