#!/usr/bin/env bash
# On the GPU machine, from the repo root (one call, ≤ ~6 min): issue 7's real-task evidence. The three seeds of
# benches/adapt_tasks.py run as three processes on the one GPU at once (a ≤15M model leaves it mostly idle:
# small kernels, launch-bound), each time-boxed by LIMIT seconds and writing its JSON after every stage, then
# they are merged into $OUT/adapt-tasks-$MACHINE.{json,md}. Extra arguments go to every seed process.
#
# carry: .carry/bases/mamba2 (the base, HF layout, in it or in its final/), .carry/adapt-data (made here by
#        `python benches/adapt_tasks.py --prepare .carry/adapt-data`), .whl (our wheel under .whl/core/)
# Usage: bash benches/gpu/adapt_tasks.sh [--steps 300 ...]
set -uo pipefail
source benches/gpu/env.sh
MODEL=${MODEL:-.carry/bases/mamba2}; DATA=${DATA:-.carry/adapt-data}; MACHINE=${MACHINE:-h100}
LIMIT=${LIMIT:-300}; SEEDS=${SEEDS:-0 1 2}
[ -e "$MODEL/final/config.json" ] && MODEL=$MODEL/final  # `ssm-offset pretrain` writes the model under final/
for need in "$MODEL/config.json" "$DATA/glue/SST-2/train.tsv" "$DATA/tokenizers/gpt-neox-20b/tokenizer.json"; do
  [ -e "$need" ] || { echo "missing $need (see the carry list at the top of this script)"; exit 2; }
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, ssm_offset._core; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
( while sleep 5; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done ) \
  > "$OUT/gpu-usage.log" 2>&1 &
mon=$!
t "seeds: $SEEDS (limit $LIMIT s each, in parallel)"
pids=()
for s in $SEEDS; do
  timeout "$LIMIT" python3 benches/adapt_tasks.py --model "$MODEL" --data-root "$DATA" --seeds "$s" \
    --out "$OUT/seed$s" --store /tmp/adapt-stores "$@" > "$OUT/seed$s.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do wait "${pids[$i]}"; echo "seed process $i: rc=$?"; done
kill "$mon" 2>/dev/null
t "seeds done"
for s in $SEEDS; do tail -n 6 "$OUT/seed$s.log"; done
files=$(for s in $SEEDS; do printf "%s," "$OUT/seed$s.json"; done)
python3 benches/adapt_tasks.py --merge "${files%,}" --out "$OUT/adapt-tasks-$MACHINE" \
  --command "LIMIT=$LIMIT MACHINE=$MACHINE bash benches/gpu/adapt_tasks.sh $*  (wall $(( $(date +%s) - T0 )) s)"
sort -t, -k1 -n "$OUT/gpu-usage.log" | tail -n 1 | sed 's/^/peak GPU memory used, utilisation: /'
t "done"
