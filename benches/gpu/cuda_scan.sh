#!/usr/bin/env bash
# On the GPU machine, from a copy of the repo: build ssm-offset's scan kernels, run the CUDA tests,
# build mamba_ssm (baseline) side by side, then run the mamba_ssm comparison test and the benchmark.
# Logs and results go to $OUT. Usage: bash benches/gpu/cuda_scan.sh [pytest -k expr]
set -uo pipefail
export PYTHONPATH=$PWD/python:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SSM_OFFSET_KERNEL_CACHE=/tmp/kcache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-deps --no-index --target /tmp/site ${WHL:-.whl}/*.whl
start=$(date +%s)
if ls ${WHEELS:-.carry/wheels}/mamba_ssm-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/site ${WHEELS:-.carry/wheels}/mamba_ssm-*.whl; m=""
else
  ( dir=/tmp/build/mamba; mkdir -p $dir && tar xzf ${SDIST:-.carry/sdist}/mamba_ssm-*.tar.gz -C $dir --strip-components=1
    python3 - $dir/setup.py <<'PY'
import sys
p = sys.argv[1]; out = []
for line in open(p):
    s = line.strip(); ind = line[: len(line) - len(line.lstrip())]
    if s == 'cc_flag.append("-gencode")' or s.startswith('cc_flag.append("arch=compute_'):
        out.append(ind + "pass\n"); continue
    out.append(line)
    if s == "cc_flag = []":
        out.append(ind + 'cc_flag += ["-gencode", "arch=compute_90,code=sm_90"]\n')
open(p, "w").write("".join(out))
PY
    cd $dir && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=10 python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/wheels . \
      && python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/wheels/mamba_ssm-*.whl ) > /tmp/build-mamba.log 2>&1 &
  m=$!
fi
python3 -m ssm_offset.cli build-kernels 2>&1 | tee $OUT/build.log
echo "our kernels built after $(( $(date +%s) - start )) s"
SSM_OFFSET_ERROR_LOG=$OUT/errors.json python3 -m pytest -q tests/test_cuda_selective_scan.py -k "${1:-not mamba}" -p no:cacheprovider 2>&1 | tee $OUT/tests.log | tail -25
if [ -n "$m" ]; then wait $m || { tail -20 /tmp/build-mamba.log; }; echo "mamba_ssm built after $(( $(date +%s) - start )) s"; fi
python3 -m pytest -q tests/test_cuda_selective_scan.py -k mamba -p no:cacheprovider 2>&1 | tail -5
python3 benches/bench_selective_scan.py --out $OUT/kernels-h100 2>&1 | tee $OUT/bench.log | tail -25
