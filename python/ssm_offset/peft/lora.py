"""LoRA (Hu et al. 2021) on any linear layer: W x + (α/r) B A dropout(x), B zero-initialised.

The wrapper replaces the `nn.Linear` itself, and every ssm-offset path (parallel forward, prefill, recurrent
step, and the CUDA kernels, which receive activations, not weights) calls that module — so the adapter is
applied everywhere. (transformers + peft on mamba_ssm's fused kernels read `x_proj.weight`/`dt_proj.weight`
directly and silently skip such adapters in training.) Per-row mixtures: Σ_k α_{b,k} (α_k/r_k) B_k A_k x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .config import AdapterError, TargetedConfig
from .layer import AdapterLayer
from .targets import find_targets, mixers, is_mamba2, wrap_once


@dataclass
class LoraConfig(TargetedConfig):
    peft_type = "LORA"
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    bias: str = "none"
    fan_in_fan_out: bool = False
    init_lora_weights: bool = True
    layers_to_transform: Optional[List[int]] = None
    modules_to_save: Optional[List[str]] = None

    @classmethod
    def from_dict(cls, d, source="adapter_config.json"):
        """Hugging Face peft writes every field it knows (a list that grows with each release). Fields of its
        that we do not implement are accepted only when they hold their inert value (None, False, empty), so a
        file that asks for DoRA, rsLoRA, per-module ranks … fails, naming the field, instead of loading wrong."""
        known = {f for f in cls.__dataclass_fields__} | {"peft_type"}
        # defaults of Hugging Face peft's that do nothing unless another (inert here) option turns them on
        inert_defaults = {"megatron_core": "megatron.core", "qalora_group_size": 16}
        active = {
            k: v for k, v in d.items()
            if k not in known and k not in cls.ignored_fields() and v not in (None, False, {}, [], "")
            and inert_defaults.get(k, object()) != v
        }
        if active:
            raise AdapterError(f"{source}: LoRA options not supported by ssm-offset: {active}")
        clean = {k: v for k, v in d.items() if k in known}
        if isinstance(clean.get("target_modules"), str):
            raise AdapterError(f"{source}: field 'target_modules' is a regular expression; ssm-offset takes a list of names")
        return super().from_dict(clean, source)

    def check(self, source: str) -> None:
        if self.r < 1:
            raise ValueError(f"{source}: field 'r' must be >= 1, got {self.r}")
        if self.bias != "none" or self.fan_in_fan_out or self.modules_to_save:
            raise ValueError(f"{source}: only bias='none', fan_in_fan_out=false, modules_to_save=null are supported")


class LoraLinear(AdapterLayer):
    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: Dict[str, float] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def add(self, name: str, r: int, alpha: float, dropout: float, init: bool) -> None:
        base = self.base_layer
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A[name] = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B[name] = nn.Linear(r, base.out_features, bias=False, **kw)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / r
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        if init:
            nn.init.zeros_(self.lora_B[name].weight)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.disabled:
            return out
        if self.row_weights is not None:
            for k, name in enumerate(self.row_names):
                w = self.row_weights[:, k].to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
                out = out + w * self.delta(name, x)
            return out
        if self.active in self.lora_A:
            out = out + self.delta(self.active, x)
        return out

    @torch.no_grad()
    def merge(self, name: str) -> None:
        w = self.lora_B[name].weight.float() @ self.lora_A[name].weight.float() * self.scaling[name]
        self.base_layer.weight += w.to(self.base_layer.weight.dtype)


def default_targets(model: nn.Module) -> List[str]:
    """The State-offset paper's LoRA: Mamba-1's S6 projections; Mamba-2 has none, so its in/out projections."""
    return ["in_proj", "out_proj"] if is_mamba2(mixers(model)[0][1]) else ["x_proj", "dt_proj"]


def inject(model: nn.Module, config: LoraConfig, name: str) -> None:
    config.check("LoraConfig")
    if config.target_modules is None:
        config.target_modules = default_targets(model)
    targets = find_targets(model, config.target_modules, nn.Linear, config.layers_to_transform)
    for path, module in targets:
        layer = wrap_once(model, path, module, LoraLinear, LoraLinear)
        layer.add(name, config.r, config.lora_alpha, config.lora_dropout, config.init_lora_weights)


def unwrap(layer: LoraLinear) -> nn.Module:
    return layer.base_layer
