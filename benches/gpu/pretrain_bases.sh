#!/usr/bin/env bash
# Issue 9's two base models, pretrained side by side on one GPU with `ssm-offset pretrain`:
# benches/quality/base-mamba.toml and base-mamba2.toml, on the pre-tokenized corpus (.carry/data/corpus-neox.npy,
# from benches/data/prepare_corpus.py), each stopping at its best held-out loss; bf16 checkpoints in shards of at
# most 16 MiB.
#
# Run from the repository root on the GPU machine (one call, about 3-4 min on an H100), with carry
#   .carry/data  .carry/sdist  .whl
# (the corpus; mamba_ssm's sdist for Mamba-2's Triton SSD; our abi3 wheel in .whl/core and einops' in .whl).
#
# What comes back, under $OUT/bases/<name>/: base.tar.part-* (at most 15 MiB each) holding
# <name>/final/ (config.json, model-0000k-of-0000N.safetensors, model.safetensors.index.json, model.sha256),
# curve.csv, pretrain.json, log.jsonl and pretrain.log; and $OUT/bases/summary.json. Unpack here with
#   cat $FILES/bases/mamba/base.tar.part-* | tar x -C .carry/bases      (likewise mamba2)
# If a run hits its time limit, its last best/ checkpoint (written at every improvement) is sent as final/.
#
# BASES_CPU=1 checks this script's logic on a CPU machine: a one-layer model, a few steps, tiny blocks.
set -uo pipefail
RUNS=${RUNS:-/tmp/bases-runs}; LIMIT=${LIMIT:-470}
source benches/gpu/env.sh
mkdir -p "$OUT/bases" "$RUNS"

EXTRA=()
if [ "${BASES_CPU:-0}" = "1" ]; then
  export OMP_NUM_THREADS=1
  EXTRA=(--train.device cpu --train.max_steps 4 --train.eval_every 2 --train.batch_size 2 --train.warmup_steps 1
         --data.block_size 64 --data.eval_fraction 0.0005 --model.num_hidden_layers 1)
  LIMIT=${LIMIT_CPU:-300}
else
  # Mamba-1's scan kernels are built once here (~35 s), not by both runs at the same time
  t "building kernels"; $PY -m ssm_offset.cli build-kernels 2>&1 | tail -2
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
$PY -m ssm_offset.cli info 2>&1 | grep -i -A1 kernel | head -3

t "pretraining both bases (limit ${LIMIT} s each)"
declare -A PID
for name in mamba mamba2; do
  timeout "$LIMIT" $PY -m ssm_offset.cli pretrain "benches/quality/base-$name.toml" \
    --train.output_dir "$RUNS/$name" "${EXTRA[@]}" > "$RUNS/$name.log" 2>&1 &
  PID[$name]=$!
done
declare -A RC
for name in mamba mamba2; do wait "${PID[$name]}"; RC[$name]=$?; t "$name finished, rc=${RC[$name]}"; done

for name in mamba mamba2; do
  run=$RUNS/$name; pack=/tmp/bases-pack/$name; rm -rf "$pack"; mkdir -p "$pack" "$OUT/bases/$name"
  if [ -d "$run/final" ]; then cp -r "$run/final" "$pack/final"
  elif [ -d "$run/best" ]; then cp -r "$run/best" "$pack/final"; echo "$name: no final/ (rc ${RC[$name]}); sending best/"
  else echo "$name: no checkpoint (rc ${RC[$name]})"; fi
  for f in curve.csv pretrain.json log.jsonl; do [ -f "$run/$f" ] && cp "$run/$f" "$pack/"; done
  cp "$run.log" "$pack/pretrain.log"
  tar cf - -C /tmp/bases-pack "$name" | split -b 15M -d - "$OUT/bases/$name/base.tar.part-"
done

t "summary"
$PY - "$RUNS" "$OUT/bases" /tmp/bases-pack "${RC[mamba]}" "${RC[mamba2]}" <<'PY'
import json, os, sys
from pathlib import Path
from ssm_offset.models import checkpoint_sha256
runs, out, pack = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
summary = {}
for name, rc in zip(("mamba", "mamba2"), sys.argv[4:6]):
    row = {"rc": int(rc)}
    if (pack / name / "final").is_dir():
        row["sha256"] = checkpoint_sha256(pack / name / "final")
        row["files"] = {p.name: p.stat().st_size for p in sorted((pack / name / "final").iterdir())}
    if (runs / name / "pretrain.json").is_file():
        s = json.loads((runs / name / "pretrain.json").read_text())["summary"]
        row.update({k: s.get(k) for k in ("parameters", "step", "best_step", "stopped_early", "best", "eval_loss",
                                          "eval_perplexity", "seconds", "train_blocks", "eval_blocks")})
        assert row["sha256"] == s["sha256"], f"{name}: packed checkpoint differs from the one pretrain hashed"
    row["parts"] = {p.name: p.stat().st_size for p in sorted((out / name).iterdir())}
    summary[name] = row
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
too_big = [f"{d}/{f}" for d, _, fs in os.walk(out) for f in fs if os.path.getsize(os.path.join(d, f)) > 16 << 20]
print("files back:", sum(len(fs) for _, _, fs in os.walk(out)), "| over 16 MiB:", too_big or "none")
PY
for name in mamba mamba2; do echo "--- $name: last lines"; grep -v "^\s*$" "$RUNS/$name.log" | tail -4; done
t "done"
