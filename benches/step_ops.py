"""What one training step costs in ops and allocations, on CPU: a proxy for GPU launches and memory traffic when
no GPU is at hand. A 2-layer Mamba with the 130M model's vocabulary (50,280), State-offset Tuning (h), batch
2 x 256, bf16 autocast, the Trainer's loss (token_loss_sum), AdamW. Counts the aten ops called from outside other
aten ops and outside the scan ops (the CPU reference scan's own per-step loop is not what a GPU runs), and the
bytes those ops allocate; "logits-sized" allocations are those of at least half the fp32 logits tensor.

    PYTHONPATH=python python benches/step_ops.py [-v]     (-v: the op histogram)
"""
import collections
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from ssm_offset.models import MambaConfig, MambaForCausalLM
from ssm_offset.peft import config_for, get_peft_model
from ssm_offset.train import token_loss_sum

VOCAB, BATCH, LENGTH = 50280, 2, 256


def profiled_step():
    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=64, state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4)
    model = get_peft_model(MambaForCausalLM(cfg), config_for("state-offset-h"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    batch = {"input_ids": ids, "labels": ids.clone()}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the casts the GPU benchmark's autocast makes
            loss = token_loss_sum(model, batch, "cpu")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # first-call work (optimiser state) stays out of the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return prof


def outer(event) -> bool:
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith(("aten::", "ssm_offset::")):
            return False
        p = p.cpu_parent
    return True


def main() -> None:
    prof = profiled_step()
    ev = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ev if outer(e)]
    scans = sum(1 for e in prof.events() if e.name.startswith("ssm_offset::"))
    counts = collections.Counter(e.name for e in top)
    alloc = sum(max(e.cpu_memory_usage, 0) for e in top)
    big = BATCH * LENGTH * VOCAB * 4 // 2
    print(f"top-level aten ops {len(top)}  all aten ops {len(ev)}  copy_ {counts['aten::copy_']}  "
          f"cat {counts['aten::cat']}  contiguous/clone {counts['aten::contiguous'] + counts['aten::clone']}  "
          f"to/_to_copy {counts['aten::to'] + counts['aten::_to_copy']}")
    print(f"scan op calls {scans}  bytes allocated by top-level aten ops {alloc / 1e6:.1f} MB  "
          f"logits-sized allocations {sum(1 for e in top if e.cpu_memory_usage >= big)}")
    if "-v" in sys.argv:
        for name, n in counts.most_common(40):
            print(f"  {n:4d} {name}")


if __name__ == "__main__":
    main()
