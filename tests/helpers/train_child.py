"""A training run in its own process, for the crash tests: `python train_child.py OUT_DIR [--slow S]
[--kill-in-checkpoint N]`. Tiny Mamba-2 + LoRA with dropout (so the RNG state matters), 12 steps, a
checkpoint every 3; writes OUT_DIR/params.safetensors and OUT_DIR/result.json at the end."""
import argparse
import json
import os
import signal
import sys
import time

import torch

torch.set_num_threads(1)

from safetensors.torch import save_file  # noqa: E402

from ssm_offset.models import Mamba2Config, model_from_config  # noqa: E402
from ssm_offset.peft import LoraConfig, get_peft_model  # noqa: E402
from ssm_offset.train import Trainer, TrainConfig  # noqa: E402
from ssm_offset.train import checkpoint as ckpt  # noqa: E402
from ssm_offset.data.batching import collate  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--kill-in-checkpoint", type=int, default=0, help="SIGKILL itself while writing checkpoint N")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = model_from_config(Mamba2Config(vocab_size=40, hidden_size=32, state_size=8, num_hidden_layers=2,
                                           num_heads=4, head_dim=16, n_groups=1))
    model = get_peft_model(model, LoraConfig(target_modules=["in_proj", "out_proj"], lora_dropout=0.2))
    g = torch.Generator().manual_seed(1)
    data = []
    for i in range(40):
        n = 6 + i % 7
        ids = torch.randint(2, 40, (n,), generator=g).numpy()
        labels = ids.copy()
        labels[: n // 2] = -100
        data.append({"input_ids": ids, "labels": labels})

    def slow_collate(examples):
        time.sleep(args.slow)
        return collate(examples, 0)

    if args.kill_in_checkpoint:
        calls = {"n": 0}
        real = ckpt.write_tensors

        def dying_write(path, tensors):
            calls["n"] += 1
            real(path, tensors)
            if calls["n"] == args.kill_in_checkpoint:
                with open(path, "r+b") as f:  # a half-written file, then death
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)

        ckpt.write_tensors = dying_write
    cfg = TrainConfig(output_dir=args.out, max_steps=12, batch_size=4, grad_accum=2, lr=3e-2, warmup_steps=2,
                      schedule="cosine", save_every=3, keep_checkpoints=2, progress=False, tensorboard=False,
                      bucket_by_length=True, seed=5)
    result = Trainer(model, cfg, data, collate=slow_collate).train()
    save_file({k: v.contiguous() for k, v in model.adapter_state_dict("default").items()},
              os.path.join(args.out, "params.safetensors"))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"loss": result["loss"], "step": result["step"]}, f)


if __name__ == "__main__":
    sys.exit(main())
