#!/usr/bin/env bash
# On the GPU machine: build mamba_ssm and causal-conv1d (comparison baselines; transformers' fast Mamba
# path needs both) from the sdists carried in .carry/sdist, for sm_90 only, side by side. Wheels that fit
# go to $OUT (xz tar parts; put them in .carry/wheels) so later runs carry them instead of rebuilding.
# Installs into /tmp/site.
set -euo pipefail
SDIST=${SDIST:-.carry/sdist}
WHEELS=${WHEELS:-.carry/wheels}
mkdir -p /tmp/site /tmp/wheels
# Built wheels come back from an earlier call as xz-compressed tar parts (the two wheels are 66 MB, over
# the 16 MiB a returned file may have and, uncompressed, over the 64 MiB carry): reassemble and install.
if ls "$WHEELS"/baselines.tar.xz.part* >/dev/null 2>&1; then
    cat "$WHEELS"/baselines.tar.xz.part* | tar xJf - -C /tmp/wheels
fi
if ls /tmp/wheels/mamba_ssm-*.whl /tmp/wheels/causal_conv1d-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/wheels/*.whl
    echo "installed carried baseline wheels"
    exit 0
fi
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
build "$SDIST"/causal_conv1d-*.tar.gz CAUSAL_CONV1D_FORCE_BUILD > /tmp/build-conv.log 2>&1 &
c=$!
build "$SDIST"/mamba_ssm-*.tar.gz MAMBA_FORCE_BUILD > /tmp/build-mamba.log 2>&1 &
m=$!
wait $m || { tail -30 /tmp/build-mamba.log; exit 1; }
echo "mamba_ssm built after $(( $(date +%s) - start )) s"
wait $c || { tail -30 /tmp/build-conv.log; exit 1; }
echo "causal-conv1d built after $(( $(date +%s) - start )) s"
ls -la /tmp/wheels
python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/wheels/*.whl
PARTS=${PARTS:-${OUT:-}}
if [ -n "$PARTS" ]; then
    mkdir -p "$PARTS"
    (cd /tmp/wheels && tar cf - *.whl | xz -T0 -6 | split -b 15M - "$PARTS/baselines.tar.xz.part")
    ls -la "$PARTS"/baselines.tar.xz.part*
fi
