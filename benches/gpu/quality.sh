#!/usr/bin/env bash
# On the GPU machine, from a copy of the repo (one call, < 10 min): the quality benchmark's pending cells
# (benches/quality/grid.toml), with workers spread over every GPU, stopping in time to hand back the results.
# Resumable: call again until it says no cell is left; bring $OUT/quality.jsonl back to benches/results/.
#
#   bash benches/gpu/quality.sh [MODELS] [WORKERS_PER_GPU] [compare options...]   e.g. ... mamba 8 --retry-errors
#
# Carry: .whl (our abi3 wheel in .whl/core, einops), .carry/sdist (mamba_ssm's source: Mamba-2's Triton SSD),
# .carry/quality/data (benches/quality/prepare.py), .carry/bases/<model> for each model named, and
# .carry/quality/wheels (sacrebleu, its pure-Python dependencies, lxml, tokenizers for CPython 3.12: installed only
# if the machine lacks them). Two ~15M-parameter bases do not fit one 64 MiB carry together: run one model per call.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
source benches/gpu/env.sh
MODELS=${1:-mamba,mamba2}; PER_GPU=${2:-8}; shift $(( $# < 2 ? $# : 2 ))
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
WORKERS=$(( ${GPUS:-1} * PER_GPU )); [ "$WORKERS" -gt 0 ] || WORKERS=$PER_GPU
BUDGET=${BUDGET:-570}  # seconds this script may take; cells stop being started so that running ones end before it
python3 -c "import sacrebleu, tokenizers" 2>/dev/null || {
  t "installing sacrebleu / tokenizers from .carry/quality/wheels"
  python3 -m pip install -q --no-deps --no-index --target /tmp/site .carry/quality/wheels/*.whl; }
python3 -c "import sacrebleu, tokenizers" || { echo "BLEU needs sacrebleu and tokenizers: carry .carry/quality/wheels"; exit 1; }
t "building kernels"; python3 -m ssm_offset.cli build-kernels 2>&1 | tail -2
cp benches/results/quality.jsonl "$OUT/quality.before.jsonl" 2>/dev/null || true
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
t "grid: models $MODELS, $WORKERS workers on $GPUS GPU(s), $LEFT s left"
# --max-minutes keeps 45 s for the workers' start and the copy below; timeout is the backstop (records are
# fsynced one by one, so a kill loses only the cells running)
timeout -k 10 $(( LEFT - 15 )) python3 -m ssm_offset compare --grid benches/quality/grid.toml --models "$MODELS" \
  --workers "$WORKERS" --max-minutes "$(python3 -c "print(max(0.5, ($LEFT - 45) / 60))")" "$@" 2>&1 | tee "$OUT/quality.log" | tail -25
cp benches/results/quality.jsonl "$OUT/quality.jsonl"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/gpus.csv" 2>/dev/null
t "done: $(grep -c '"kind": "cell"' "$OUT/quality.jsonl") cell records"
