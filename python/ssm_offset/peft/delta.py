"""Adapters that change an existing parameter, W' = f(W, Δ): BitFit (bias + Δ), SDT (A_log + mask⊙Δ) and
Additional-scan (A_log and x_proj grown by new rows). They are registered with torch's parametrize, so every
read of the parameter — by any path, module call or direct `.weight` access — sees the adapted value.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .layer import AdapterLayer


class ParamDelta(AdapterLayer):
    """W' = W + mask ⊙ Δ_active (mask optional, per adapter), or, with `grow`, W' = grow(W, Δ_active)."""

    mixable_per_row = False

    def __init__(self, grow: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.delta = nn.ParameterDict()
        self.masks = nn.Module()  # one buffer per adapter name, saved with the adapter
        self.grow = grow

    def add(self, name: str, init: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        self.delta[name] = nn.Parameter(init)
        if mask is not None:
            self.set_mask(name, mask)

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        self.masks.register_buffer(name, mask)

    def mask(self, name: str) -> Optional[torch.Tensor]:
        return getattr(self.masks, name, None)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        if self.mask(name) is not None:
            delattr(self.masks, name)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.active not in self.delta:
            return W
        d = self.delta[self.active]
        if self.grow is not None:
            return self.grow(W, d)
        mask = self.mask(self.active)
        if mask is not None:
            d = d * mask
        return W + d.to(W.dtype)


def delta_on(module: nn.Module, tensor_name: str, grow=None) -> ParamDelta:
    """The ParamDelta on module.<tensor_name>, registering it on first use."""
    if parametrize.is_parametrized(module, tensor_name):
        for p in module.parametrizations[tensor_name]:
            if isinstance(p, ParamDelta):
                return p
    layer = ParamDelta(grow)
    parametrize.register_parametrization(module, tensor_name, layer, unsafe=grow is not None)
    return layer


def remove_deltas(model: nn.Module, merge_adapter: Optional[str]) -> None:
    """Drop every ParamDelta; with `merge_adapter`, its W' becomes the new plain parameter."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations.keys()):
            layers = [p for p in module.parametrizations[tensor_name] if isinstance(p, ParamDelta)]
            for p in layers:
                p.active, p.disabled, p.row_weights = merge_adapter, merge_adapter is None, None
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=merge_adapter is not None)
