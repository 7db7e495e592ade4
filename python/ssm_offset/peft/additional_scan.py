"""Additional-scan (the State-offset paper's baseline): the S6 state grows from N to N + k. New A_log columns
are copies of the last column; new rows of x_proj's B part start small and random, new rows of its C part
start at zero — so outputs are unchanged at the start (C reads nothing from the new states) while the
gradient of the new C rows is not zero (the new states are driven by B). Only the new entries train.
Mamba-1 only: Mamba-2's B and C pass through the causal conv, whose channels would have to grow too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from .config import AdapterError, PeftConfig
from .delta import delta_on
from .layer import adapter_dtype
from .targets import is_mamba2, mixers


@dataclass
class AdditionalScanConfig(PeftConfig):
    peft_type = "ADDITIONAL_SCAN"
    k: int = 8
    b_init_std: float = 1e-2
    layers_to_transform: Optional[List[int]] = None


def _grow_A(A_log: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    return torch.cat([A_log, extra.to(A_log.dtype)], dim=1)


def _grow_x_proj(rank: int, n: int):
    """x_proj rows are [dt (rank), B (n), C (n)]; the new B and C rows go after each part: [dt, B, B', C, C']."""

    def grow(W: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        k = extra.shape[0] // 2
        e = extra.to(W.dtype)
        return torch.cat([W[: rank + n], e[:k], W[rank + n :], e[k:]], dim=0)

    return grow


def inject(model: nn.Module, config: AdditionalScanConfig, name: str) -> None:
    if config.k < 1:
        raise ValueError(f"AdditionalScanConfig: field 'k' must be >= 1, got {config.k}")
    found = mixers(model, config.layers_to_transform)
    if is_mamba2(found[0][1]):
        raise AdapterError("ADDITIONAL_SCAN is defined for Mamba-1 (S6) mixers; this model is Mamba-2")
    g = torch.Generator().manual_seed(0)
    for _, mixer in found:
        n, k = mixer.state_size, config.k
        a_extra = mixer.A_log.detach()[:, -1:].to(adapter_dtype(mixer.A_log)).repeat(1, k)
        W = mixer.x_proj.weight
        b_new = torch.randn(k, W.shape[1], generator=g) * config.b_init_std
        xc = torch.cat([b_new, torch.zeros(k, W.shape[1])]).to(W.device, adapter_dtype(W))
        delta_on(mixer.x_proj, "weight", _grow_x_proj(mixer.time_step_rank, n)).add(name, xc)
        delta_on(mixer, "A_log", _grow_A).add(name, a_extra.to(mixer.A_log.device))
