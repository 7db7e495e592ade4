#!/usr/bin/env bash
# On the GPU machine (one call, ~7 min): the merged main's CUDA tests (Mamba-1 kernels, adapters on the fast
# path), a TransMamba CUDA smoke test, and the self-adaptation benchmark at the Mamba-130M shape.
# mamba_ssm's Triton SSD is imported from the unpacked sdist (no CUDA build). Logs and results go to $OUT.
set -uo pipefail
source benches/gpu/env.sh
t "building kernels"; python3 -m ssm_offset.cli build-kernels 2>&1 | tail -2
python3 -m ssm_offset.cli info
t "Mamba-1 CUDA tests"
timeout 170 python3 -m pytest -q --tb=short tests/test_cuda_selective_scan.py -k "not mamba" -p no:cacheprovider 2>&1 | tee $OUT/tests-s6.log | tail -4
t "adapters on the fast path"
timeout 120 python3 -m pytest -q --tb=short tests/test_cuda_adapters.py -p no:cacheprovider 2>&1 | tee $OUT/tests-adapters.log | tail -4
t "TransMamba on CUDA"
timeout 60 python3 - <<'PY' 2>&1 | tee $OUT/transmamba-cuda.log
import torch
from ssm_offset.models import TransMambaConfig, TransMambaForCausalLM
torch.manual_seed(0)
cfg = TransMambaConfig(vocab_size=256, hidden_size=128, state_size=64, num_hidden_layers=4, num_heads=4, head_dim=64,
                       n_groups=1, chunk_size=64, transpoints_train=[0, 64, 128, 512], transpoints_infer=[0, 64, 128, 512])
cpu = TransMambaForCausalLM(cfg).eval()
gpu = TransMambaForCausalLM(cfg).cuda().eval(); gpu.load_state_dict(cpu.state_dict())
x = torch.randint(0, 256, (2, 300))
with torch.no_grad():
    a = cpu(x).logits; b = gpu(x.cuda()).logits.cpu()
    rel = ((a - b).norm() / a.norm()).item()
    with torch.autocast("cuda", torch.bfloat16):
        c = gpu(x.cuda()).logits.float().cpu()
    relb = ((a - c).norm() / a.norm()).item()
    out = gpu.generate([x[0, :100].cuda()], max_new_tokens=40, eos_token_id=[])[0]
    par = gpu(torch.cat([x[0, :100].cuda(), out])[None]).logits[0, 99:-1].argmax(-1)
gpu.train(); loss = gpu(x.cuda(), labels=x.cuda()).loss; loss.backward()
grads = all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())
print(f"fp32 CUDA vs CPU rel {rel:.2e}; bf16 autocast rel {relb:.2e}; decode==parallel {par.tolist() == out.tolist()}; finite grads everywhere {grads}")
assert rel < 1e-3 and relb < 5e-2 and grads
PY
t "self-adaptation benchmark, Mamba-130M shape"
timeout 230 python3 benches/bench_adapt.py --shape mamba-130m --out $OUT/adapt-h100 2>&1 | tee $OUT/adapt.log | tail -14
t "done"
