"""TransMamba replication at small scale (issue 8): a Transformer (transformers' `LlamaForCausalLM`), Mamba-2 and
TransMamba of equal non-embedding parameter count, trained from scratch on the same tokens of the shared English
corpus in the same order, with the same optimiser and learning-rate schedule.

Reported per model: validation loss (and ppl) along training, training throughput (steady state: a first
forward+backward compiles and autotunes the kernels apart, then the first `--timing-skip` steps are left out; every
step ends in torch.cuda.synchronize), time per step, peak memory, and which kernels ran (a profiled step). For TransMamba also
the validation loss under inference schedules other than the training one, and a greedy sample per schedule whose
cached decoding (KV cache converted into the SSM state at each TransPoint) is checked against the parallel forward.

Data: `.carry/data/corpus-neox.npy` (benches/data/prepare_corpus.py: one GPT-NeoX uint16 stream, eos after each
text) cut into blocks of `--block` tokens; a seeded 5% of the blocks is held out (the same blocks for every model).

Models (GPU defaults; `--preset tiny` is a seconds-long CPU run of the same code):
  mamba2       our Mamba2ForCausalLM, d 256, 16 layers, 8 heads × 64, state 64, one group, tied embeddings
  transmamba   the same parameters as TransMambaForCausalLM; TransPoints [0, 16, 32, …, 1024] for 1024-token
               blocks (the paper's [0, 128, …, 8192] shape at 1/8 of its length), cycled over the 16 layers
  llama        LlamaForCausalLM, d 256, half the layers (a Transformer layer is attention + MLP, two mixers'
               worth), 4 heads × 64, SDPA attention, tied embeddings; its MLP width is solved so that its
               non-embedding parameters match Mamba-2's (rounded to a multiple of 32)
Every model keeps its library's own initialisation. Vocabulary: the tokenizer's 50,277 ids padded to 50,280.

    python benches/transmamba_replication.py --out DIR                     # the GPU run (benches/gpu/…sh)
    python benches/transmamba_replication.py --preset tiny --out /tmp/tmr  # CPU check of the whole script

Writes DIR/transmamba-replication-<machine>.json and .md after each model (a run cut short keeps what it did).
Why not `ssm_offset.train.Trainer`: its tokens/s counts from the first step and includes evaluation and
checkpoint writes; here steps are timed alone. The pieces it shares are reused: `lr_factor`, `token_loss_sum`,
`TrainConfig` for the optimiser settings, `epoch_batches` for the data order.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("transmamba", "mamba2", "llama")
PRESETS: Dict[str, Dict[str, Any]] = {
    # ~20M parameters each (12.9M of them the tied embedding), 16 × 1024 tokens a step, 2 epochs ≈ 5.7M tokens
    "gpu": dict(block=1024, batch=16, epochs=2.0, d_model=256, layers=16, state=64, head_dim=64, chunk=256,
                lr="2e-3", warmup=0.1, evals=6, timing_skip=10, gen_prompt=40, gen_new=100, log_every=20),
    "tiny": dict(block=32, batch=4, epochs=0.0, max_steps=3, d_model=32, layers=4, state=16, head_dim=16, chunk=8,
                 lr="3e-3", warmup=0.0, evals=1, timing_skip=1, gen_prompt=6, gen_new=12, log_every=1,
                 schedule="0,4,8,16,32"),
}


# ------------------------------------------------------------------------------------------------------ data
def load_corpus(path: Path) -> Dict[str, Any]:
    """The token stream and what describes it (the .json beside it, when there is one)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no token array (make it with benches/data/prepare_corpus.py on the CPU machine "
                         "and carry .carry/data to the GPU machine)")
    tokens = np.load(path)
    if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
        raise SystemExit(f"{path}: expected a 1-D integer token array, got {tokens.dtype} {tokens.shape}")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    vocab = int(meta.get("vocab_size", int(tokens.max()) + 1))
    if int(tokens.max()) >= vocab:
        raise SystemExit(f"{path}: id {int(tokens.max())} is outside the vocabulary ({vocab}) its .json states")
    return {"tokens": tokens, "vocab": vocab, "eos_id": int(meta.get("eos_id", 0)), "meta": meta,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "path": _shown(path)}


def _shown(path: Path) -> str:
    """The path relative to the checkout when it lies inside it (the report then reads the same on any machine)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def split_blocks(tokens: np.ndarray, block: int, val_fraction: float, seed: int):
    """Consecutive blocks of `block` tokens (the partial last one dropped); a seeded `val_fraction` of them held
    out. The split depends only on (len(tokens), block, fraction, seed), so every model sees the same one."""
    from ssm_offset.data.batching import Blocks

    n = len(tokens) // block
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise SystemExit(f"{n} blocks of {block} tokens: too few for a training and a validation split")
    blocks = tokens[: n * block].astype(np.int64).reshape(n, block)
    order = np.random.default_rng(seed).permutation(n)
    return Blocks(blocks[np.sort(order[n_val:])]), Blocks(blocks[np.sort(order[:n_val])])


# ---------------------------------------------------------------------------------------------------- models
def padded_vocab(vocab: int, multiple: int = 8) -> int:
    return -(-vocab // multiple) * multiple


def param_counts(model: torch.nn.Module) -> Dict[str, int]:
    """Total (a tied head counted once) and non-embedding (total minus the input embedding) parameters."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if model.lm_head.weight is not embedding:
        raise ValueError(f"{type(model).__name__}: the comparison assumes tied input/output embeddings")
    return {"total": total, "non_embedding": total - embedding.numel()}


def ssm_config(args, vocab: int, arch: str, eos_id: int):
    from ssm_offset.models import Mamba2Config, TransMambaConfig

    d_inner = 2 * args.d_model
    common = dict(vocab_size=vocab, hidden_size=args.d_model, state_size=args.state, num_hidden_layers=args.layers,
                  num_heads=d_inner // args.head_dim, head_dim=args.head_dim, n_groups=1, expand=2,
                  chunk_size=args.chunk, tie_word_embeddings=True, eos_token_id=eos_id, bos_token_id=eos_id,
                  pad_token_id=eos_id)
    if arch == "mamba2":
        return Mamba2Config(**common)
    # evaluation during training uses the training schedule; other schedules are set explicitly afterwards
    return TransMambaConfig(**common, transpoints_train=list(args.schedule), transpoints_infer=list(args.schedule))


def llama_config(args, vocab: int, eos_id: int, intermediate: int):
    from transformers import LlamaConfig

    heads = args.d_model // args.head_dim
    return LlamaConfig(vocab_size=vocab, hidden_size=args.d_model, intermediate_size=intermediate,
                       num_hidden_layers=max(1, args.layers // 2), num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=args.block, tie_word_embeddings=True, bos_token_id=eos_id,
                       eos_token_id=eos_id, pad_token_id=eos_id, attn_implementation="sdpa",
                       use_cache=False)  # training and scoring only: no KV cache built in the forward


def llama_intermediate_size(args, vocab: int, eos_id: int, target: int, multiple: int = 32) -> int:
    """The MLP width (a multiple of `multiple`) whose LlamaForCausalLM has the non-embedding parameter count
    closest to `target`. The count is affine in the width, so two meta-device models give the slope."""
    counts = []
    for width in (multiple, 2 * multiple):
        with torch.device("meta"):
            counts.append(param_counts(llama_model(llama_config(args, vocab, eos_id, width)))["non_embedding"])
    per_unit = (counts[1] - counts[0]) / multiple
    best = round((target - counts[0]) / per_unit / multiple) * multiple + multiple
    return max(multiple, best)


def llama_model(config):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(config)


def build_model(arch: str, args, vocab: int, eos_id: int, seed: int) -> torch.nn.Module:
    """A freshly initialised model (seeded the same way for every architecture)."""
    from ssm_offset.models import Mamba2ForCausalLM, TransMambaForCausalLM
    from ssm_offset.train import seed_everything

    if arch == "llama":
        with torch.device("meta"):
            target = param_counts(Mamba2ForCausalLM(ssm_config(args, vocab, "mamba2", eos_id)))["non_embedding"]
        config = llama_config(args, vocab, eos_id, llama_intermediate_size(args, vocab, eos_id, target))
        seed_everything(seed)
        return llama_model(config)
    seed_everything(seed)
    cls = TransMambaForCausalLM if arch == "transmamba" else Mamba2ForCausalLM
    return cls(ssm_config(args, vocab, arch, eos_id))


def describe(model: torch.nn.Module) -> Dict[str, Any]:
    cfg = model.config
    out = {"class": type(model).__name__, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
           **param_counts(model)}
    if hasattr(cfg, "num_attention_heads"):  # the Transformer
        out.update(mlp=cfg.intermediate_size, heads=cfg.num_attention_heads,
                   attention=getattr(cfg, "_attn_implementation", None))
    else:
        out.update(heads=cfg.num_heads, head_dim=cfg.head_dim, state=cfg.state_size, chunk=cfg.chunk_size)
        if hasattr(cfg, "transpoints_train"):
            out["transpoints_train"] = list(cfg.transpoints_train)
    return out


# ------------------------------------------------------------------------------------------------- training
def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, blocks, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss over all positions of the held-out blocks (eval mode: TransMamba's inference schedule
    or its explicit one)."""
    from ssm_offset.data.batching import collate
    from ssm_offset.train import token_loss_sum

    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        batch = collate([blocks[j] for j in range(i, min(i + batch_size, len(blocks)))])
        with autocast(device):
            total += float(token_loss_sum(model, batch, device))
        count += int(batch["labels"][:, 1:].numel())
    model.train(was)
    return total / count


def parse_lr(spec: str) -> Dict[str, float]:
    """'2e-3' (every model) or 'llama=1e-3,mamba2=2e-3,transmamba=2e-3' (each model named)."""
    if "=" not in spec:
        return {a: float(spec) for a in ARCHS}
    out = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ARCHS:
            raise SystemExit(f"--lr: unknown model {name!r}; expected some of {list(ARCHS)}")
        out[name.strip()] = float(value)
    missing = [a for a in ARCHS if a not in out]
    if missing:
        raise SystemExit(f"--lr: no learning rate for {missing}")
    return out


def train_config(args, lr: float, total_steps: int):
    from ssm_offset.train import TrainConfig

    return TrainConfig(lr=lr, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, schedule="cosine",
                       warmup_steps=int(args.warmup * total_steps), min_lr_ratio=0.1, max_grad_norm=1.0,
                       batch_size=args.batch, seed=args.seed, max_steps=total_steps)


def schedule_of_steps(args, n_train: int) -> List[List[int]]:
    """Every step's block indices: seeded epoch orders (`epoch_batches`, full batches only so every step has the
    same shape), cut at the token budget. The same list for every model."""
    from ssm_offset.data.batching import epoch_batches

    per_epoch = n_train // args.batch
    if per_epoch == 0:
        raise SystemExit(f"{n_train} training blocks do not fill one batch of {args.batch}")
    total = args.max_steps or max(1, int(round(args.epochs * per_epoch)))
    steps: List[List[int]] = []
    epoch = 0
    while len(steps) < total:
        steps += epoch_batches(n_train, args.batch, args.seed, epoch, min_last=args.batch)
        epoch += 1
    return steps[:total]


def train_model(model, args, lr: float, train, val, steps: List[List[int]], device: torch.device,
                log=print) -> Dict[str, Any]:
    """AdamW (decay on matrices only, as the Trainer does), warm-up + cosine, clipping at 1, bf16 autocast on GPU.
    Returns the curves and timings; stops early (flagged `truncated`) past `args.max_train_seconds` of training
    and evaluation, counted after a first forward+backward that compiles (Triton: autotunes) the kernels."""
    from ssm_offset.data.batching import collate
    from ssm_offset.train import lr_factor, token_loss_sum

    total = len(steps)
    cfg = train_config(args, lr, total)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    eval_at = sorted({0, total} | {round(k * total / args.evals) for k in range(1, args.evals)})
    tokens_per_step = args.batch * args.block
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # the compiling pass: gradients are dropped and no optimiser step is taken, so training starts from the same
    # weights; its time is reported apart (it is not part of any model's training speed)
    sync(device)
    t0 = time.perf_counter()
    with autocast(device):
        token_loss_sum(model, collate([train[i] for i in steps[0]]), device).backward()
    model.zero_grad(set_to_none=True)
    sync(device)
    compile_s = time.perf_counter() - t0
    log(f"  first forward+backward (compiles kernels): {compile_s:.1f} s")
    val_curve, train_curve, step_s = [], [], []
    status, started = "ok", time.perf_counter()
    for step in range(total + 1):
        if step in eval_at:
            loss = evaluate(model, val, args.batch, device)
            val_curve.append({"step": step, "tokens": step * tokens_per_step, "val_loss": loss})
            log(f"  step {step:5d}/{total}  val loss {loss:.4f}")
        if step == total:
            break
        if time.perf_counter() - started > args.max_train_seconds:
            status = f"truncated at step {step} of {total} (--max-train-seconds {args.max_train_seconds})"
            log(f"  {status}")
            val_curve.append({"step": step, "tokens": step * tokens_per_step,
                              "val_loss": evaluate(model, val, args.batch, device)})
            break
        batch = collate([train[i] for i in steps[step]])
        targets = int(batch["labels"][:, 1:].numel())
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            loss_sum = token_loss_sum(model, batch, device)
        (loss_sum / targets).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        step_s.append(time.perf_counter() - t0)
        loss = float(loss_sum.detach()) / targets
        train_curve.append(loss)
        if not math.isfinite(loss):
            status = f"non-finite training loss at step {step + 1}"
            log(f"  {status}: stopping this model")
            break
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            log(f"  step {step + 1:5d}/{total}  loss {loss:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{1e3 * step_s[-1]:7.1f} ms/step  {tokens_per_step / step_s[-1]:10,.0f} tok/s  "
                f"[{time.perf_counter() - started:.0f} s]")
    steady = step_s[args.timing_skip:] or step_s
    mean_s = float(np.mean(steady)) if steady else float("nan")
    every = max(1, len(train_curve) // 50)  # the training-loss curve kept at about 50 points
    return {
        "lr": lr, "steps": len(step_s), "planned_steps": total, "tokens": len(step_s) * tokens_per_step,
        "status": status, "val_curve": val_curve, "final_val_loss": val_curve[-1]["val_loss"],
        "train_loss_every": every, "train_curve": train_curve[::every],
        "step_ms_mean": 1e3 * mean_s, "step_ms_median": 1e3 * float(np.median(steady)) if steady else float("nan"),
        "tokens_per_s": tokens_per_step / mean_s, "timed_steps": len(steady),
        "first_steps_ms": [1e3 * s for s in step_s[: args.timing_skip]], "compile_pass_seconds": compile_s,
        "train_seconds": time.perf_counter() - started,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


# --------------------------------------------------------------------------------------- kernels, schedules
def kernel_report(model, batch, device: torch.device) -> Dict[str, Any]:
    """Which implementations ran: the SSD dispatcher's own account, and on CUDA the kernels of one profiled
    forward+backward (no optimiser step: the weights do not change)."""
    from ssm_offset.ops.ssd import kernel as ssd_kernel
    from ssm_offset.train import token_loss_sum

    out: Dict[str, Any] = {"ssd_dispatch": ssd_kernel.status() if device.type == "cuda" else
                           "PyTorch reference (CPU tensors)"}
    if device.type != "cuda":
        return out
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            with autocast(device):
                loss = token_loss_sum(model, batch, device)
            loss.backward()
            sync(device)
        model.zero_grad(set_to_none=True)
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if t:
                rows.append((t, e.key, e.count))
        rows.sort(reverse=True)
        names = [r[1] for r in rows]
        # mamba_ssm's SSD kernels are named _chunk_cumsum/_chunk_state/_state_passing/_chunk_scan_*_kernel
        out["triton_ssd_kernels"] = sorted({n for n in names if "_chunk_" in n or "state_passing" in n})[:8]
        attention = ("flash", "fmha", "attention", "sdpa")
        out["attention_kernels"] = sorted({n for n in names if any(k in n.lower() for k in attention)})[:6]
        total_us = sum(r[0] for r in rows)
        out["top_kernels"] = [{"name": n[:90], "share": t / total_us, "calls": c} for t, n, c in rows[:8]]
        out["kernels_per_step"] = sum(r[2] for r in rows)
    except Exception as exc:  # noqa: BLE001 — the profile is a diagnostic; the run goes on without it
        out["profile_error"] = f"{type(exc).__name__}: {exc}"
    return out


def inference_schedules(args) -> Dict[str, List[int]]:
    """Inference schedules that differ from the training one (all cycled over the layers like it)."""
    train = list(args.schedule)
    return {"training schedule": train,
            "TransPoints ×2": [2 * p for p in train],
            "TransPoints ÷2": [p // 2 for p in train],
            "pure SSM (P = 0)": [0],
            "pure attention (P = block)": [args.block]}


def schedule_losses(model, args, val, device) -> Dict[str, Dict[str, Any]]:
    out = {}
    for name, schedule in inference_schedules(args).items():
        model.set_schedule(schedule)
        loss = evaluate(model, val, args.batch, device)
        out[name] = {"schedule": schedule, "val_loss": loss, "ppl": math.exp(loss)}
    model.set_schedule(None)
    return out


@torch.no_grad()
def generation_check(model, prompt: torch.Tensor, new_tokens: int, schedule: Sequence[int], device,
                     decode=None) -> Dict[str, Any]:
    """Greedy decoding (prefill, then one token at a time: KV cache until each layer's TransPoint, SSM state after
    it) in fp32, and the parallel forward's argmax over the same tokens: the two should pick the same tokens
    (up to near-ties of fp32 rounding)."""
    model.eval()
    model.set_schedule(list(schedule))
    try:
        prompt = prompt.to(device)
        new = model.generate([prompt], new_tokens, eos_token_id=[])[0]
        parallel = model(torch.cat([prompt, new])[None]).logits[0, len(prompt) - 1 : -1].argmax(-1)
    finally:
        model.set_schedule(None)
    same = (parallel == new).cpu()
    out = {"schedule": list(schedule), "prompt": prompt.tolist(), "generated": new.tolist(),
           "agree_with_parallel": float(same.float().mean()),
           "first_disagreement": None if bool(same.all()) else int((~same).nonzero()[0, 0])}
    if decode is not None:
        out["prompt_text"], out["generated_text"] = decode(prompt.tolist()), decode(new.tolist())
    return out


def tokenizer_decoder(path: Optional[str], expected_sha: Optional[str]):
    """A decode(ids) -> str from the GPT-NeoX tokenizer.json the corpus was made with, or None with a reason."""
    if not path:
        return None, "no --tokenizer given: samples are ids only"
    p = Path(path)
    if not p.is_file():
        return None, f"{path}: not found; samples are ids only"
    if expected_sha and hashlib.sha256(p.read_bytes()).hexdigest() != expected_sha:
        return None, f"{path}: not the tokenizer the corpus was made with (sha256 differs); samples are ids only"
    try:
        # Hugging Face `tokenizers` directly (a dependency of transformers): ssm_offset.data's Tokenizer would also
        # need the Rust extension, which only decoding here would use
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p))
        return (lambda ids: tok.decode([int(i) for i in ids], skip_special_tokens=True)), None
    except Exception as exc:  # noqa: BLE001
        return None, f"tokenizer unavailable ({type(exc).__name__}: {exc}); samples are ids only"


# ------------------------------------------------------------------------------------------------- reporting
def machine(device: torch.device) -> Dict[str, Any]:
    import transformers

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()})")
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": name,
            "threads": torch.get_num_threads()}


def machine_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for tag in ("h200", "h100", "a100", "l40s", "a10", "l4"):
        if tag in name:
            return tag
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def fmt(x, spec=".4f", none="—"):
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def verdict(models: Dict[str, Any]) -> List[str]:
    """The paper's ordering, checked as stated (loss: TransMamba ≤ the others; speed: faster than the Transformer)."""
    done = {k: v for k, v in models.items() if "train" in v}
    if not {"transmamba", "mamba2", "llama"} <= set(done):
        return ["- Not every model finished: no verdict."]
    loss = {k: v["train"]["final_val_loss"] for k, v in done.items()}
    tm = loss["transmamba"]
    order = " < ".join(f"{k} {loss[k]:.4f}" for k in sorted(loss, key=loss.get))
    rate = {k: v["train"]["tokens_per_s"] for k, v in done.items()}
    speed = rate["transmamba"] / rate["llama"]
    flags = [v["train"]["status"] for v in done.values() if v["train"]["status"] != "ok"]
    lines = [f"- Final validation loss, lowest first: {order}. TransMamba ≤ both others: "
             f"**{'yes' if tm <= min(loss['mamba2'], loss['llama']) else 'no'}** "
             f"(vs Mamba-2 {tm - loss['mamba2']:+.4f}, vs Transformer {tm - loss['llama']:+.4f} nats/token).",
             f"- Training throughput, TransMamba / Transformer: **{speed:.2f}×** "
             f"({'faster' if speed > 1 else 'slower'}; the paper reports TransMamba ~25% faster at 1.5B). "
             f"Mamba-2 / Transformer: {rate['mamba2'] / rate['llama']:.2f}×.",
             "- One seed and one learning rate per model: loss differences of a few hundredths are within what a "
             "second seed could move."]
    if flags:
        lines.append(f"- Not a like-for-like comparison: {flags}.")
    return lines


def markdown(result: Dict[str, Any]) -> str:
    m, s, c = result["machine"], result["settings"], result["corpus"]
    models = result["models"]
    lines = [f"# TransMamba replication at small scale — {m['device']}", "",
             f"`{result['command']}` — torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}, "
             f"Python {m['python']}, {m['date']}.", "",
             f"Corpus: {c['tokens']:,} GPT-NeoX tokens ({c['path']}, sha256 {c['sha256'][:12]}…) in {c['blocks']} "
             f"blocks of {s['block']}: {c['train_blocks']} train, {c['val_blocks']} held out (seed {s['seed']}). "
             f"Every model: the same {result['steps']} steps × {s['batch']} × {s['block']} tokens "
             f"({result['steps'] * s['batch'] * s['block']:,} tokens, {result['epochs']:.2f} epochs) in the same "
             "order, "
             f"AdamW (β 0.9/0.95, weight decay 0.1 on matrices), {s['warmup']:.0%} linear warm-up then cosine to 10%, "
             f"clipping 1.0, {'bf16 autocast' if result['device_type'] == 'cuda' else 'fp32'}; learning rate "
             f"{s['lr']}{' (one for all, not tuned per model)' if '=' not in str(s['lr']) else ''}. "
             f"Vocabulary {result['vocab']:,} (tied embeddings). Throughput: mean over the steps after the first "
             f"{s['timing_skip']} (synchronised per step); peak = max allocated during training.", "",
             "| model | layers | non-embedding params | total params | final val loss | ppl | tokens/s | ms/step "
             "(mean / median) | peak GB | compile pass s | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, v in models.items():
        d = v.get("model", {})
        t = v.get("train")
        if t is None:
            lines.append(f"| {arch} | {d.get('layers', '—')} | {d.get('non_embedding', 0):,} | {d.get('total', 0):,} "
                         f"| — | — | — | — | — | — | failed: {v.get('error', '?').splitlines()[-1][:80]} |")
            continue
        lines.append(f"| {arch} | {d['layers']} | {d['non_embedding']:,} | {d['total']:,} | {t['final_val_loss']:.4f} "
                     f"| {math.exp(t['final_val_loss']):.1f} | {t['tokens_per_s']:,.0f} | {t['step_ms_mean']:.1f} / "
                     f"{t['step_ms_median']:.1f} | {fmt(t['peak_memory_gb'], '.2f')} | {t['compile_pass_seconds']:.1f} "
                     f"| {t['status']} |")
    trained = {k: v["train"] for k, v in models.items() if "train" in v}
    if trained:
        lines += ["", "Validation loss along training:", "",
                  "| step | tokens | " + " | ".join(trained) + " |", "|---|---|" + "---|" * len(trained)]
        first = next(iter(trained.values()))
        for i, point in enumerate(first["val_curve"]):
            vals = [fmt(t["val_curve"][i]["val_loss"]) if i < len(t["val_curve"]) else "—" for t in trained.values()]
            lines.append(f"| {point['step']} | {point['tokens']:,} | " + " | ".join(vals) + " |")
    tm = models.get("transmamba", {})
    if "schedules" in tm:
        lines += ["", f"TransMamba under inference schedules (trained with {tm['model']['transpoints_train']}, "
                  f"cycled over {tm['model']['layers']} layers):", "",
                  "| inference schedule | TransPoints | val loss | ppl |", "|---|---|---|---|"]
        for name, r in tm["schedules"].items():
            lines.append(f"| {name} | {r['schedule']} | {r['val_loss']:.4f} | {r['ppl']:.1f} |")
    if tm.get("generation"):
        lines += ["", "TransMamba greedy samples (fp32; cached decoding vs the parallel forward's argmax over the "
                  "same tokens):", ""]
        first = next(iter(tm["generation"].values()))
        if "prompt" in first:
            lines.append(f"- prompt ({len(first['prompt'])} tokens of the first held-out block): "
                         f"{json.dumps(first.get('prompt_text', first['prompt']))}")
        for name, g in tm["generation"].items():
            if "error" in g:
                lines.append(f"- {name}: failed — {g['error']}")
                continue
            text = g.get("generated_text")
            shown = json.dumps(text) if text is not None else str(g["generated"][:24]) + " …"
            where = g["first_disagreement"]
            where = "" if where is None else f" (first difference at new token {where})"
            lines.append(f"- {name} {g['schedule']}: agreement {g['agree_with_parallel']:.3f}{where} — {shown}")
        if tm.get("decode_note"):
            lines.append(f"- ({tm['decode_note']})")
    lines += ["", "Kernels (one profiled forward+backward per model):", ""]
    for arch, v in models.items():
        k = v.get("kernels")
        if not k:
            continue
        if arch == "llama":
            detail = [f"transformers, {v['model'].get('attention')} attention"]
        else:
            detail = [k["ssd_dispatch"]]
        if k.get("triton_ssd_kernels"):
            detail.append("Triton SSD kernels seen: " + ", ".join(k["triton_ssd_kernels"][:4]))
        elif arch != "llama" and result["device_type"] == "cuda":
            detail.append("**no Triton SSD kernel in the profile**")
        if k.get("attention_kernels"):
            detail.append("attention: " + ", ".join(x[:60] for x in k["attention_kernels"][:2]))
        if k.get("kernels_per_step"):
            detail.append(f"{k['kernels_per_step']:,} kernel launches per forward+backward")
        if k.get("top_kernels"):
            top = k["top_kernels"][:3]
            detail.append("most GPU time: " + ", ".join(f"{r['name'][:50]} {r['share']:.0%}" for r in top))
        if k.get("profile_error"):
            detail.append("profile failed: " + k["profile_error"])
        lines.append(f"- {arch}: " + "; ".join(detail))
    lines += ["", "Reading (computed from the numbers above):", ""] + verdict(models)
    return "\n".join(lines) + "\n"


def write(result: Dict[str, Any], out: Optional[Path]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"transmamba-replication-{result['machine_tag']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]]):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    known, _ = pre.parse_known_args(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpu", help="default sizes (gpu: the replication)")
    p.add_argument("--data", default=str(ROOT / ".carry" / "data" / "corpus-neox.npy"))
    p.add_argument("--tokenizer", default=str(ROOT / ".carry" / "data" / "gpt-neox-tokenizer.json"),
                   help="to print the samples as text (optional)")
    p.add_argument("--out", default=None, help="directory for transmamba-replication-<machine>.json/.md")
    p.add_argument("--machine", default=None, help="the <machine> of the file names (default: from the GPU name)")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma list, in running order")
    p.add_argument("--device", default="auto")
    p.add_argument("--block", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, default=0, help="a step budget instead of --epochs")
    p.add_argument("--lr", help="one rate, or llama=…,mamba2=…,transmamba=…")
    p.add_argument("--warmup", type=float, help="warm-up as a fraction of the steps")
    p.add_argument("--d-model", type=int)
    p.add_argument("--layers", type=int, help="Mamba-2 / TransMamba layers (the Transformer gets half)")
    p.add_argument("--state", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--chunk", type=int)
    p.add_argument("--schedule", default=None, help="TransMamba's training TransPoints, comma list "
                   "(default: geometric_transpoints(block), e.g. 0,16,32,…,1024 for 1024)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evals", type=int, help="validation points after step 0")
    p.add_argument("--timing-skip", type=int)
    p.add_argument("--max-train-seconds", type=float, default=120.0,
                   help="per model; a model stopped by it is flagged (its tokens then differ)")
    p.add_argument("--autotune-configs", type=int, default=2,
                   help="mamba_ssm autotuning configs kept per Triton kernel (compile time; 0 = all)")
    p.add_argument("--gen-prompt", type=int)
    p.add_argument("--gen-new", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(**PRESETS[known.preset])
    args = p.parse_args(argv)
    from ssm_offset.models import geometric_transpoints

    args.schedule = ([int(x) for x in args.schedule.split(",")] if isinstance(args.schedule, str)
                     else geometric_transpoints(args.block, 8))
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in args.archs if a not in ARCHS]
    if bad:
        raise SystemExit(f"--archs: unknown {bad}; expected some of {list(ARCHS)}")
    if (2 * args.d_model) % args.head_dim or args.d_model % args.head_dim:
        raise SystemExit(f"--head-dim {args.head_dim} must divide --d-model {args.d_model} (Transformer heads)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    lrs = parse_lr(str(args.lr))
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t_start = time.perf_counter()

    corpus = load_corpus(Path(args.data))
    vocab = padded_vocab(corpus["vocab"])
    train, val = split_blocks(corpus["tokens"], args.block, args.val_fraction, args.seed)
    steps = schedule_of_steps(args, len(train))
    if device.type == "cuda" and args.autotune_configs:
        from ssm_offset.ops.ssd import kernel as ssd_kernel

        log(f"SSD autotuning (mamba_ssm's and ours) limited to {args.autotune_configs} config(s) in "
            f"{ssd_kernel.limit_autotuning(args.autotune_configs)} kernels")
    result: Dict[str, Any] = {
        "command": "python3 benches/transmamba_replication.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(device), "machine_tag": args.machine or machine_tag(device), "device_type": device.type,
        "settings": {k: v for k, v in vars(args).items()}, "vocab": vocab, "steps": len(steps),
        "epochs": len(steps) * args.batch / len(train),
        "corpus": {"path": corpus["path"], "sha256": corpus["sha256"], "tokens": int(len(corpus["tokens"])),
                   "blocks": len(train) + len(val), "train_blocks": len(train), "val_blocks": len(val),
                   "tokenizer_sha256": corpus["meta"].get("tokenizer_sha256")},
        "models": {},
    }
    log(f"{result['machine']['device']}, torch {torch.__version__}: {len(train)} train / {len(val)} val blocks of "
        f"{args.block}, {len(steps)} steps of {args.batch}, vocab {vocab}, TransPoints {args.schedule}")
    decode, decode_note = tokenizer_decoder(args.tokenizer, corpus["meta"].get("tokenizer_sha256"))
    for arch in args.archs:
        entry: Dict[str, Any] = {}
        result["models"][arch] = entry
        model = None
        try:
            model = build_model(arch, args, vocab, corpus["eos_id"], args.seed)
            entry["model"] = describe(model)
            log(f"[{time.perf_counter() - t_start:.0f} s] {arch}: {entry['model']}")
            entry["train"] = train_model(model, args, lrs[arch], train, val, steps, device, log)
            from ssm_offset.data.batching import collate

            entry["kernels"] = kernel_report(model, collate([train[i] for i in steps[0]]), device)
            log(f"  kernels: {json.dumps({k: v for k, v in entry['kernels'].items() if k != 'top_kernels'})}")
            if arch == "transmamba":
                entry["schedules"] = schedule_losses(model, args, val, device)
                for name, r in entry["schedules"].items():
                    log(f"  {name:28s} {str(r['schedule']):45s} val loss {r['val_loss']:.4f}")
                prompt = torch.as_tensor(val[0]["input_ids"][: args.gen_prompt])
                entry["generation"] = {}
                for name in ("training schedule", "TransPoints ×2", "pure SSM (P = 0)"):
                    try:
                        g = generation_check(model, prompt, args.gen_new, entry["schedules"][name]["schedule"],
                                             device, decode)
                    except Exception as exc:  # noqa: BLE001 — a failed sample is reported, the run goes on
                        g = {"error": f"{type(exc).__name__}: {exc}"}
                    entry["generation"][name] = g
                    shown = {k: g.get(k) for k in ("agree_with_parallel", "first_disagreement", "error")}
                    log(f"  sample, {name}: {json.dumps(shown)} {json.dumps(g.get('generated_text', ''))[:160]}")
                entry["decode_note"] = decode_note
        except Exception:  # noqa: BLE001 — one model failing must not lose the others' results
            entry["error"] = traceback.format_exc()
            log(f"  {arch} FAILED:\n{entry['error']}")
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["wall_seconds"] = time.perf_counter() - t_start
        write(result, Path(args.out) if args.out else None)
    log(markdown(result))
    log(f"total {time.perf_counter() - t_start:.0f} s")
    return result


if __name__ == "__main__":
    main()
