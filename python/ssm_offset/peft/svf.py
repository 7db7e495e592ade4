"""SVF, singular value fine-tuning (Transformer², Sun et al. 2025): for W = U diag(σ) Vᵀ (thin SVD, computed
once per layer and kept as buffers), learn z ∈ R^r:

    W' = U diag(σ ⊙ z) Vᵀ · (Σσ / Σ(σ⊙z))        (rescaled to keep the nuclear norm; z = 1 gives W)

Applied in factored form, y = ((x V) ⊙ (σ⊙z·s)) Uᵀ + b, which is also how a batch gives each row its own z
(a mixture of experts' z vectors) without rebuilding any weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from .config import TargetedConfig
from .layer import AdapterLayer, adapter_dtype
from .targets import find_targets, wrap_once


@dataclass
class SVFConfig(TargetedConfig):
    peft_type = "SVF"
    layers_to_transform: Optional[List[int]] = None


class SVFLinear(AdapterLayer):
    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        W = base_layer.weight.detach().to(adapter_dtype(base_layer.weight))
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        # buffers shared by every adapter of this layer; not saved with adapters (recomputed from W)
        self.register_buffer("U", U, persistent=False)
        self.register_buffer("S", S, persistent=False)
        self.register_buffer("Vh", Vh, persistent=False)
        self.z = nn.ParameterDict()

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def add(self, name: str) -> None:
        self.z[name] = nn.Parameter(torch.ones_like(self.S))

    def scaled_singular_values(self, z: torch.Tensor) -> torch.Tensor:
        s = self.S * z
        return s * (self.S.sum() / s.sum(-1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pick(self.z)
        if z is None:
            return self.base_layer(x)
        s = self.scaled_singular_values(z.to(self.S.dtype))  # (r,) or (batch, r)
        if s.dim() == 2:
            s = s.view(s.shape[0], *([1] * (x.dim() - 2)), s.shape[1])
        # the factors stay fp32 (merges and z gradients need them exact); a half-precision activation runs the two
        # products in its own precision, as the base layer would, not as fp32 GEMMs several times slower
        cd = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else self.S.dtype
        h = (x.to(cd) @ self.Vh.t().to(cd)) * s.to(cd)
        out = (h @ self.U.t().to(cd)).to(x.dtype)
        if self.base_layer.bias is not None:
            out = out + self.base_layer.bias
        return out

    @torch.no_grad()
    def merge(self, name: str) -> None:
        s = self.scaled_singular_values(self.z[name].to(self.S.dtype))
        self.base_layer.weight.copy_(((self.U * s) @ self.Vh).to(self.base_layer.weight.dtype))


def inject(model: nn.Module, config: SVFConfig, name: str) -> None:
    if config.target_modules is None:
        config.target_modules = ["in_proj", "out_proj"]
    for path, module in find_targets(model, config.target_modules, nn.Linear, config.layers_to_transform):
        wrap_once(model, path, module, SVFLinear, SVFLinear).add(name)
