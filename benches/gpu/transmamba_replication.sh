#!/usr/bin/env bash
# On the GPU machine (one call, ~4-5 min on an H100): the TransMamba replication (benches/transmamba_replication.py):
# Transformer, Mamba-2 and TransMamba of equal non-embedding size trained on the same corpus tokens.
# Needs, carried from the CPU machine: .carry/data (corpus-neox.npy + .json from benches/data/prepare_corpus.py;
# gpt-neox-tokenizer.json, optional, prints the samples as text), .carry/sdist (mamba_ssm sdist: its Triton SSD is
# imported from the unpacked source, no CUDA build) and .whl (einops, which that SSD imports).
# Results and the log go to $OUT. Extra arguments pass on to the script (e.g. --lr 1e-3, --archs llama).
set -uo pipefail
source benches/gpu/env.sh
[ -f .carry/data/corpus-neox.npy ] || { echo "no .carry/data/corpus-neox.npy: carry .carry/data"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# say up front whether Mamba-2 will get the Triton SSD (without it the PyTorch reference runs: slow, and the
# per-model time limit would cut the Mamba-2 models short)
python3 -c "from ssm_offset.ops.ssd import kernel as k; print('Triton SSD importable:', k.available()); print(k.status())"
t "replication"
timeout 540 python3 benches/transmamba_replication.py --out "$OUT" "$@" 2>&1 | tee "$OUT/transmamba-replication.log"
t "done (rc ${PIPESTATUS[0]})"
