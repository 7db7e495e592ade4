"""Data parallel on two GPUs equals one process with the same global batch (the 2-GPU run issue 5 asks for).

    torchrun --nproc_per_node 2 benches/gpu/ddp_two_gpus.py two OUT_TWO
    python3 benches/gpu/ddp_two_gpus.py one OUT_ONE OUT_TWO        # trains on one GPU and compares
The CPU version of this check (gloo, 2 processes) is tests/test_train.py::test_ddp_on_two_gloo_processes_…
"""
import json
import sys

import torch
from safetensors.torch import load_file

from ssm_offset.models import Mamba2Config, model_from_config
from ssm_offset.peft import config_for, get_peft_model
from ssm_offset.train import TrainConfig, Trainer


def model():
    torch.manual_seed(0)
    base = model_from_config(Mamba2Config(vocab_size=40, hidden_size=32, state_size=8, num_hidden_layers=2,
                                          num_heads=4, head_dim=16, n_groups=1))
    return get_peft_model(base, config_for("lora-inout"))


def pairs(n=32, vocab=40, prompt=4, target=4):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(2, vocab, (prompt + target,), generator=g).numpy()
        labels = ids.copy()
        labels[:prompt] = -100
        if i % 4 == 0:
            labels[6:] = -100  # unequal target counts per process: the loss is normalised by the global batch
        out.append({"input_ids": ids, "labels": labels})
    return out


# fp32 without TF32: the comparison is about the data-parallel arithmetic, not about bf16 rounding (which Adam
# amplifies to about one learning rate on parameters whose gradient is near zero)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def train(out, batch_size):
    m = model()
    Trainer(m, TrainConfig(output_dir=out, max_steps=4, batch_size=batch_size, lr=1e-2, progress=False, precision="fp32",
                           tensorboard=False, resume=False, save_every=2), pairs()).train()
    return m


if __name__ == "__main__":
    if sys.argv[1] == "two":
        train(sys.argv[2], batch_size=4)
    else:
        one = train(sys.argv[2], batch_size=8)
        two = load_file(f"{sys.argv[3]}/final/adapter_model.safetensors")
        diff = max((v.detach().float().cpu() - two[k].float()).abs().max().item()
                   for k, v in one.adapter_state_dict("default").items())
        logs = [[json.loads(l)["loss"] for l in open(f"{d}/log.jsonl") if '"loss"' in l] for d in sys.argv[2:4]]
        print(json.dumps({"gpus": torch.cuda.device_count(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                          "max_abs_param_diff": diff, "losses_one": logs[0], "losses_two": logs[1]}))
        assert diff < 1e-5, diff
