"""`ssm-offset demo`: the embedded default job — no network, no GPU, a few minutes on 2 CPU cores.

1. pretrains a tiny Mamba-2 on four Project Gutenberg books bundled in the package (a 2,048-token byte-level BPE
   tokenizer trained on them is bundled too: a 50k vocabulary would dominate compute at this size);
2. fine-tunes it on a bundled DART subset (data-to-text, MIT) with State-offset Tuning, LoRA and Prompt Tuning,
   same data and budget;
3. prints the comparison table — BLEU and target-token loss on held-out triple sets, trainable parameters,
   time — against the untuned model, and the path of the loss-curve plot. Exit status 0 when every method
   reaches a lower held-out loss than the untuned model.
"""
from __future__ import annotations

import time
from pathlib import Path

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "bundled"
ARCH = {"model_type": "mamba2", "hidden_size": 128, "state_size": 16, "num_hidden_layers": 4, "num_heads": 4,
        "head_dim": 64, "n_groups": 1, "expand": 2, "chunk_size": 64}
METHODS = ["state-offset-h", "lora-inout", "prompt"]


def run(args) -> int:
    import torch

    from ssm_offset.train import TrainConfig
    from ssm_offset.train.run import DataSpec, EvalSpec, MethodSpec, ModelSpec, RunConfig, pretrain

    from .compare import compare, table

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.output)
    start = time.perf_counter()
    tokenizer = str(BUNDLED / "tokenizer.json")
    quiet = dict(progress=not args.no_progress, tensorboard=False, resume=False, device="cpu", log_every=5)
    print(f"[1/2] pretraining a tiny Mamba-2 on {len(list((BUNDLED / 'gutenberg').glob('*.txt')))} bundled "
          f"Project Gutenberg books ({args.pretrain_steps} steps)")
    base = pretrain(ARCH, [str(BUNDLED / "gutenberg")], tokenizer, block_size=128,
                    train=TrainConfig(output_dir=str(out / "base"), max_steps=args.pretrain_steps, batch_size=16,
                                      lr=6e-3, warmup_steps=15, schedule="cosine", min_lr_ratio=0.1,
                                      seed=args.seed, **quiet))
    print(f"base model: {base['parameters']:,} parameters, held-out LM loss {base['best']:.3f}, "
          f"sha256 {base['sha256'][:16]}…  ({time.perf_counter() - start:.0f} s)")

    print(f"\n[2/2] fine-tuning on bundled DART ({', '.join(METHODS)}), {args.finetune_steps} steps each")
    run_config = RunConfig(
        model=ModelSpec(path=base["model"]),
        method=MethodSpec(),
        data=DataSpec(tokenizer=tokenizer, train=str(BUNDLED / "dart" / "train.jsonl"),
                      eval=str(BUNDLED / "dart" / "test.jsonl"), template="dart", max_length=96, truncation="drop"),
        train=TrainConfig(output_dir=str(out / "compare"), max_steps=args.finetune_steps, batch_size=16, lr=0.0,
                          warmup_steps=10, schedule="linear", seed=args.seed, bucket_by_length=True, **quiet),
        eval=EvalSpec(metric="bleu", max_new_tokens=40, num_beams=1, limit=0),
    )
    result = compare(run_config, METHODS)
    rows = result["rows"]
    print("\nDART, held-out triple sets (BLEU: higher is better; loss: lower is better)\n")
    print(table(rows))
    base_row = rows[0]
    beats = [r["method"] for r in rows[1:] if r["eval_loss"] < base_row["eval_loss"]]
    print(f"\nlower held-out loss than the untuned model: {', '.join(beats) or 'none'} ({len(beats)} of {len(rows) - 1}); "
          "higher BLEU: " + (", ".join(r["method"] for r in rows[1:] if r["bleu"] > base_row["bleu"]) or "none"))
    print(f"loss curves: {result['plot']}")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return 0 if len(beats) == len(rows) - 1 else 1


def register(sub) -> None:
    p = sub.add_parser("demo", help="the embedded default job: pretrain a tiny Mamba, compare PEFT methods (CPU)",
                       description=__doc__)
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine more threads spin and slow down)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
