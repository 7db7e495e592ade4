#!/usr/bin/env bash
# On the GPU machine: build mamba_ssm and causal-conv1d (comparison baselines; transformers' fast Mamba
# path needs both) from the sdists carried in .carry/sdist, for sm_90 only, side by side. Wheels that fit
# go to $OUT (xz tar parts; put them in .carry/wheels) so later runs carry them instead of rebuilding.
# Installs into /tmp/site.
set -euo pipefail
SDIST=${SDIST:-.carry/sdist}
WHEELS=${WHEELS:-.carry/wheels}
mkdir -p /tmp/site /tmp/wheels
# Built wheels come back from an earlier call (as xz tar parts: together they are 66 MB, over the 16 MiB a
# returned file may have). Both do not fit one 64 MiB carry: carry one (its .whl in $WHEELS, e.g.
# causal-conv1d, the slow build) and this builds only the one missing.
if ls "$WHEELS"/baselines.tar.xz.part* >/dev/null 2>&1; then
    cat "$WHEELS"/baselines.tar.xz.part* | tar xJf - -C /tmp/wheels
fi
cp "$WHEELS"/*.whl /tmp/wheels/ 2>/dev/null || true
have() { ls /tmp/wheels/$1-*.whl >/dev/null 2>&1; }
build() {  # $1 sdist, $2 FORCE variable
    local dir=/tmp/build/$(basename "$1" .tar.gz)
    mkdir -p /tmp/build && tar xzf "$1" -C /tmp/build
    # Keep only sm_90 in the gencode list: empty branches get `pass` so the file still parses.
    python3 - "$dir/setup.py" <<'PY'
import re, sys
p = sys.argv[1]; out = []
for line in open(p):
    s = line.strip()
    if s == 'cc_flag.append("-gencode")' or s.startswith('cc_flag.append("arch=compute_'):
        out.append(line[: len(line) - len(line.lstrip())] + "pass\n")
        continue
    out.append(line)
    if s == "cc_flag = []":
        out.append(line[: len(line) - len(line.lstrip())] + 'cc_flag += ["-gencode", "arch=compute_90,code=sm_90"]\n')
open(p, "w").write("".join(out))
PY
    (cd "$dir" && env "$2"=TRUE MAX_JOBS=${BUILD_JOBS:-8} python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/wheels . )
}
start=$(date +%s)
need_conv=1; have causal_conv1d && need_conv=0
need_mamba=1; have mamba_ssm && need_mamba=0
if [ $need_conv = 1 ]; then build "$SDIST"/causal_conv1d-*.tar.gz CAUSAL_CONV1D_FORCE_BUILD > /tmp/build-conv.log 2>&1 & c=$!; fi
if [ $need_mamba = 1 ]; then build "$SDIST"/mamba_ssm-*.tar.gz MAMBA_FORCE_BUILD > /tmp/build-mamba.log 2>&1 & m=$!; fi
if [ $need_mamba = 1 ]; then wait $m || { tail -30 /tmp/build-mamba.log; exit 1; }; echo "mamba_ssm built after $(( $(date +%s) - start )) s"; fi
if [ $need_conv = 1 ]; then wait $c || { tail -30 /tmp/build-conv.log; exit 1; }; echo "causal-conv1d built after $(( $(date +%s) - start )) s"; fi
built=$(( need_conv + need_mamba ))
ls -la /tmp/wheels
python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/wheels/*.whl
PARTS=${PARTS:-${OUT:-}}
if [ -n "$PARTS" ] && [ $built -gt 0 ]; then
    mkdir -p "$PARTS"
    (cd /tmp/wheels && tar cf - *.whl | xz -T0 -6 | split -b 15M - "$PARTS/baselines.tar.xz.part")
    ls -la "$PARTS"/baselines.tar.xz.part*
fi
