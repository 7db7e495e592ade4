# Sourced by every GPU script (repo root as cwd on the GPU machine): the environment they share.
# - Our Rust core: the GPU machine has no cargo, so the abi3 wheel built here travels in .whl/core (carry .whl);
#   its _core.abi3.so goes beside the checkout's Python sources (git-ignored, so a copied tree arrives without
#   it) unless one is there already, and must have been built from this checkout's rust/ (ssm_offset.native).
# - mamba_ssm's Triton SSD from the carried sdist (.carry/sdist), unpacked, no CUDA build; einops from .whl.
# - One kernel cache, unbuffered output, $OUT, and t() for timestamps.
export PYTHONUNBUFFERED=1 SSM_OFFSET_KERNEL_CACHE=${SSM_OFFSET_KERNEL_CACHE:-/tmp/kcache}
OUT=${OUT:-/tmp/out}; SITE=${SITE:-/tmp/site}; mkdir -p "$OUT" "$SITE" /tmp/msrc
T0=${T0:-$(date +%s)}; t() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
PY=${PYTHON:-python3}
if [ ! -f python/ssm_offset/_core.abi3.so ]; then
  $PY - <<'PY' || exit 1
import glob, zipfile
wheels = sorted(glob.glob(".whl/core/*.whl"))
if not wheels:
    raise SystemExit(".whl/core/*.whl missing: build it on the CPU machine (maturin build --release) and carry .whl")
with zipfile.ZipFile(wheels[-1]) as z:
    open("python/ssm_offset/_core.abi3.so", "wb").write(z.read("ssm_offset/_core.abi3.so"))
PY
fi
if ls .carry/sdist/mamba_ssm-*.tar.gz >/dev/null 2>&1 && [ ! -d /tmp/msrc/mamba_ssm ]; then
  tar xzf .carry/sdist/mamba_ssm-*.tar.gz -C /tmp/msrc --strip-components=1
fi
if ! $PY -c "import einops" 2>/dev/null && ls .whl/einops-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index --target "$SITE" .whl/einops-*.whl
fi
export PYTHONPATH=$PWD/python:/tmp/msrc:$SITE
$PY -c "from ssm_offset.native import check_core; check_core('rust')" || exit 1
