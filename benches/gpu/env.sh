# Sourced by the GPU scripts (repo root as cwd on the GPU machine): our Rust extension from the carried abi3
# wheel (.whl/core/*.whl; its _core.abi3.so goes beside the package's sources, which come from the checkout),
# mamba_ssm's Triton SSD from the carried sdist (unpacked, no CUDA build), one kernel cache, unbuffered output.
export PYTHONUNBUFFERED=1 SSM_OFFSET_KERNEL_CACHE=${SSM_OFFSET_KERNEL_CACHE:-/tmp/kcache}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/msrc
T0=${T0:-$(date +%s)}; t() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 - <<'PY' || exit 1
import glob, zipfile
wheels = glob.glob(".whl/core/*.whl")
if not wheels:
    raise SystemExit(".whl/core/*.whl missing: build it here with maturin build --release and carry .whl")
with zipfile.ZipFile(wheels[0]) as z:
    open("python/ssm_offset/_core.abi3.so", "wb").write(z.read("ssm_offset/_core.abi3.so"))
PY
if ls .carry/sdist/mamba_ssm-*.tar.gz >/dev/null 2>&1 && [ ! -d /tmp/msrc/mamba_ssm ]; then
  tar xzf .carry/sdist/mamba_ssm-*.tar.gz -C /tmp/msrc --strip-components=1
fi
if ls .whl/einops-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .whl/einops-*.whl 2>/dev/null
fi
export PYTHONPATH=$PWD/python:/tmp/msrc:/tmp/site
