"""Training experts (Transformer², section 3): an adapter per task, by cross-entropy on (prompt, label) pairs or
by REINFORCE on sampled answers with an optional KL penalty to the base model, as the paper trains SVF.

    train_expert(peft, "sst2", data, objective="ce", steps=200, lr=2e-3)
    train_expert(peft, "sst2", data, objective="reinforce", kl_coef=0.1, reward=exact_match_reward)

REINFORCE maximises E_{ŷ~π_θ(·|x)}[r(ŷ, y)] − λ·KL(π_θ ‖ π_base): per step, sample an answer for each prompt
from the adapted model, score it (default: +1 when it reproduces the label up to eos, −1 otherwise, the
paper's reward), and descend −(r − b)·log π_θ(ŷ|x) + λ·Σ_t KL_t, with b the batch-mean reward (variance
reduction; `baseline=None` for the plain estimator) and KL_t the exact KL between the adapted and the base
next-token distributions at each answer position.

Cross-entropy training runs on `ssm_offset.train.Trainer`; `train_expert(trainer=...)` takes any other callable
that trains the active adapter of a PeftModel on a FewShotSet.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..peft import PeftModel
from .fewshot import FewShotSet

__all__ = ["train_expert", "fit_cross_entropy", "fit_reinforce", "exact_match_reward", "TrainStats", "OBJECTIVES"]

OBJECTIVES = ("ce", "reinforce")
Reward = Callable[[List[int], List[int]], float]


@dataclass
class TrainStats:
    losses: List[float]
    rewards: List[float]  # REINFORCE: mean reward per step
    kls: List[float]      # REINFORCE: mean per-token KL to the base per step


def exact_match_reward(answer: List[int], label: List[int]) -> float:
    """+1 when the sampled answer is the label (both up to and including eos), −1 otherwise."""
    return 1.0 if answer == label else -1.0


def _trainable(model: PeftModel) -> List[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the active adapter has no trainable parameters (loaded with inference_mode=True?)")
    return params


def fit_cross_entropy(model: torch.nn.Module, data: FewShotSet, steps: int, lr: float = 1e-3, batch_size: int = 8,
                      seed: int = 0, weight_decay: float = 0.0, **trainer_config) -> TrainStats:
    """Label-token cross-entropy with AdamW, constant lr, on what `model` leaves trainable (a PeftModel: its
    active adapter; a plain model: every weight) — through `ssm_offset.train.Trainer`; `trainer_config` adds
    TrainConfig fields (e.g. output_dir to keep its logs and checkpoints)."""
    import tempfile

    from ..train import Trainer, TrainConfig, read_log

    examples = []
    for ids, labels in zip(data.input_ids, data.labels):
        end = int((labels != -100).nonzero()[:, 0].max()) + 1  # right padding dropped; the Trainer collates
        examples.append({"input_ids": ids[:end], "labels": labels[:end]})
    with tempfile.TemporaryDirectory(prefix="ssm-offset-expert-") as tmp:
        config = TrainConfig(**{
            "output_dir": tmp, "max_steps": steps, "batch_size": min(batch_size, len(examples)), "lr": lr,
            "weight_decay": weight_decay, "schedule": "constant", "seed": seed, "progress": False,
            "tensorboard": False, "resume": False, "max_grad_norm": 0.0, "precision": "fp32", **trainer_config})
        Trainer(model, config, examples).train()
        log = Path(config.output_dir) / "log.jsonl"
        losses = [r["loss"] for r in read_log(log) if "loss" in r and "step" in r] if log.is_file() else []
    model.eval()
    return TrainStats(losses, [], [])


def _split(data: FewShotSet) -> tuple:
    """(prompts, labels) as id lists: the prompt is everything before the first label token."""
    prompts, labels = [], []
    for ids, lab in zip(data.input_ids, data.labels):
        where = (lab != -100).nonzero()[:, 0]
        prompts.append(ids[: int(where[0])].tolist())
        labels.append(lab[where].tolist())
    return prompts, labels


def fit_reinforce(model: PeftModel, data: FewShotSet, steps: int, lr: float = 1e-3, batch_size: int = 8,
                  kl_coef: float = 0.0, reward: Reward = exact_match_reward, baseline: Optional[str] = "mean",
                  max_new_tokens: Optional[int] = None, temperature: float = 1.0, seed: int = 0,
                  eos_token_id: Optional[int] = None) -> TrainStats:
    """REINFORCE (+ λ·KL to the base model) on the active adapter; see the module docstring."""
    prompts, labels = _split(data)
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    max_new = max_new_tokens or max(len(l) for l in labels) + 1
    g = torch.Generator().manual_seed(seed)
    device = model.lm_head.weight.device
    sampler = torch.Generator(device).manual_seed(seed)
    opt = torch.optim.AdamW(_trainable(model), lr=lr)
    stats = TrainStats([], [], [])
    for _ in range(steps):
        idx = torch.randint(0, len(prompts), (min(batch_size, len(prompts)),), generator=g).tolist()
        model.eval()
        gen = model.generate([prompts[i] for i in idx], max_new, do_sample=True, temperature=temperature,
                             generator=sampler, eos_token_id=[] if eos is None else eos)
        answers = []
        for row in gen.tolist():
            cut = row.index(eos) + 1 if eos is not None and eos in row else len(row)
            answers.append(row[:cut])
        r = torch.tensor([reward(a, labels[i]) for a, i in zip(answers, idx)], dtype=torch.float32, device=device)
        adv = r - r.mean() if baseline == "mean" else r
        # one teacher-forced forward over prompt + answer gives log π_θ(ŷ|x) with gradients
        width = max(len(prompts[i]) + len(a) for a, i in zip(answers, idx))
        ids = torch.zeros(len(idx), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(idx), width, dtype=torch.bool, device=device)
        for b, (a, i) in enumerate(zip(answers, idx)):
            p = prompts[i]
            ids[b, : len(p) + len(a)] = torch.tensor(p + a, device=device)
            mask[b, len(p): len(p) + len(a)] = True
        model.train()
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
        target_mask = mask[:, 1:]
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0] * target_mask
        loss = -(adv * tok.sum(1)).mean()
        kl_value = torch.zeros((), device=device)
        if kl_coef > 0:
            with torch.no_grad(), model.disable_adapter():
                base = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
            kl_tok = (logp.exp() * (logp - base)).sum(-1)  # KL(π_θ ‖ π_base) at each answer position
            kl_value = (kl_tok * target_mask).sum() / target_mask.sum().clamp(min=1)
            loss = loss + kl_coef * (kl_tok * target_mask).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.losses.append(loss.item())
        stats.rewards.append(float(r.mean()))
        stats.kls.append(kl_value.item())
    model.eval()
    return stats


def train_expert(model: PeftModel, adapter: str, data: FewShotSet, objective: str = "ce", steps: int = 100,
                 lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                 trainer: Optional[Callable[[PeftModel, FewShotSet], object]] = None, **kwargs) -> TrainStats:
    """Train adapter `adapter` of `model` (made active and trainable) on `data` with `objective` "ce" or
    "reinforce" (kwargs: kl_coef, reward, baseline, max_new_tokens, temperature). `trainer`, when given, runs
    the cross-entropy training instead of the plain loop."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: got {objective!r}, expected one of {list(OBJECTIVES)}")
    model._check_name(adapter)
    model.peft_config[adapter].inference_mode = False
    model.set_adapter(adapter)
    if objective == "ce":
        if trainer is not None:
            trainer(model, data)
            return TrainStats([], [], [])
        return fit_cross_entropy(model, data, steps, lr, batch_size, seed, **kwargs)
    return fit_reinforce(model, data, steps, lr, batch_size, seed=seed, **kwargs)
