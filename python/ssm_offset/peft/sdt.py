"""SDT / SDLoRA (Galim et al. 2024), selective dimension tuning for Mamba-1: LoRA on out_proj plus sparse
updates to A_log and to the B and C rows of x_proj, on dimensions chosen after a warm-up.

Phases, called by a training loop (the Trainer drives them):
  1. `begin_warmup(model)`: only ΔA_log trains, on every entry.
  2. `record_updates(model)` after each optimiser step: accumulates the squared update of ΔA_log per entry.
  3. `select_dimensions(model)`: rank channels d by Σ_n score[d, n] and keep the top (1 − channel_freeze);
     inside a kept channel keep the top `state_keep` fraction of states n; B and C use the same (d, n) —
     x_proj's B/C row n, column d. The deltas restart from zero and now A_log, B, C (masked) and the LoRA
     on out_proj train.
Until `select_dimensions` runs, masks keep every entry (so the method trains like a dense ΔA + ΔB + ΔC).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .config import AdapterError, PeftConfig
from .delta import ParamDelta, delta_on
from .layer import adapter_dtype
from .lora import LoraLinear
from .targets import find_targets, is_mamba2, mixers, wrap_once


@dataclass
class SDTConfig(PeftConfig):
    peft_type = "SDT"
    r: int = 8
    lora_alpha: float = 8
    channel_freeze: float = 0.99
    state_keep: float = 0.25
    layers_to_transform: Optional[List[int]] = None


class _Phase:
    WARMUP, SPARSE = "warmup", "sparse"


def _bc_rows(mixer) -> slice:
    r, n = mixer.time_step_rank, mixer.state_size
    return slice(r, r + 2 * n)


def inject(model: nn.Module, config: SDTConfig, name: str) -> None:
    found = mixers(model, config.layers_to_transform)
    if is_mamba2(found[0][1]):
        raise AdapterError("SDT is defined for Mamba-1 (S6) mixers; this model is Mamba-2")
    if not (0.0 <= config.channel_freeze < 1.0 and 0.0 < config.state_keep <= 1.0):
        raise ValueError("SDTConfig: need 0 <= channel_freeze < 1 and 0 < state_keep <= 1")
    for path, mixer in found:
        a = delta_on(mixer, "A_log")
        a.add(name, torch.zeros_like(mixer.A_log, dtype=adapter_dtype(mixer.A_log)), torch.ones_like(mixer.A_log, dtype=adapter_dtype(mixer.A_log)))
        x = delta_on(mixer.x_proj, "weight")
        W = mixer.x_proj.weight
        bc = torch.zeros_like(W, dtype=adapter_dtype(mixer.A_log))
        bc[_bc_rows(mixer)] = 1.0
        x.add(name, torch.zeros_like(W, dtype=adapter_dtype(mixer.A_log)), bc)
        a.sdt_phase = x.sdt_phase = None
        a.sdt_score = torch.zeros_like(mixer.A_log, dtype=adapter_dtype(mixer.A_log))
    for path, module in find_targets(model, [m + ".out_proj" for m, _ in found], nn.Linear):
        wrap_once(model, path, module, LoraLinear, LoraLinear).add(name, config.r, config.lora_alpha, 0.0, True)


def _layers(model: nn.Module, name: str):
    for _, mixer in mixers(model):
        params = mixer.parametrizations["A_log"] if parametrize.is_parametrized(mixer, "A_log") else []
        a = next((p for p in params if isinstance(p, ParamDelta)), None)
        if a is None or name not in a.delta:
            continue
        x = next(p for p in mixer.x_proj.parametrizations["weight"] if isinstance(p, ParamDelta))
        yield mixer, a, x


def begin_warmup(model: nn.Module, name: str = "default") -> None:
    for mixer, a, x in _layers(model, name):
        a.sdt_phase, a.sdt_prev = _Phase.WARMUP, a.delta[name].detach().clone()
        a.sdt_score.zero_()
    _set_trainable(model, name, warmup=True)


@torch.no_grad()
def record_updates(model: nn.Module, name: str = "default") -> None:
    for mixer, a, x in _layers(model, name):
        now = a.delta[name].detach()
        a.sdt_score += (now - a.sdt_prev).float().square()
        a.sdt_prev = now.clone()


@torch.no_grad()
def select_dimensions(model: nn.Module, name: str = "default", config: Optional[SDTConfig] = None) -> dict:
    """Set the sparse masks from the warm-up scores; returns {"channels": kept per layer, "states": per channel}."""
    config = config or SDTConfig()
    kept = {}
    for mixer, a, x in _layers(model, name):
        score = a.sdt_score
        d, n = score.shape
        n_ch = max(1, math.ceil((1 - config.channel_freeze) * d))
        n_st = max(1, math.ceil(config.state_keep * n))
        channels = score.sum(1).topk(n_ch).indices
        mask = torch.zeros_like(score)
        states = score[channels].topk(n_st, dim=1).indices
        mask[channels[:, None], states] = 1.0
        a.set_mask(name, mask.to(a.delta[name].device))
        xm = torch.zeros_like(x.delta[name])
        rows = _bc_rows(mixer)
        nstate = mixer.state_size
        # x_proj rows r..r+N are B, r+N..r+2N are C; column d is channel d
        xm[rows.start : rows.start + nstate] = mask.t()
        xm[rows.start + nstate : rows.stop] = mask.t()
        x.set_mask(name, xm)
        a.delta[name].zero_()
        x.delta[name].zero_()
        a.sdt_phase = x.sdt_phase = _Phase.SPARSE
        kept[mixer.layer_idx] = channels.tolist()
    _set_trainable(model, name, warmup=False)
    return {"channels": kept, "states_per_channel": n_st if kept else 0}


def _set_trainable(model: nn.Module, name: str, warmup: bool) -> None:
    for mixer, a, x in _layers(model, name):
        a.delta[name].requires_grad_(True)
        x.delta[name].requires_grad_(not warmup)
        lora = mixer.out_proj
        if isinstance(lora, LoraLinear):
            for p in lora.adapter_parameters(name):
                p.requires_grad_(not warmup)
