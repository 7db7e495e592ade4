"""State-based methods: State-offset Tuning (variants h and y) and Initial State Tuning (Kang et al. 2025).

    variant h      y_t = C_t·(h_t + h') + D⊙x_t        h' (D, N) per layer; Mamba-2 (H, P, N)
    variant y      out_t = (y_t + y')⊙silu(z_t)         y' (D,) per layer;  Mamba-2 (H, P), before the gated norm
    initial state  h_0 learned                          (D, N) / (H, P, N)
All zero-initialised, so the model starts exactly as the base model. They reach the scan op as tensors: a
forward pre-hook on each mixer passes them as the mixer's `state_offset` / `y_offset` / `initial_state`
keyword arguments, on every path (parallel, prefill, step, kernels). Being linear in the model's output
path, a mixture of experts is a mixture of these tensors, which is what per-row adapters exploit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn

from .config import PeftConfig
from .layer import AdapterLayer, adapter_dtype
from .targets import is_mamba2, mixers

KINDS = ("state_offset", "y_offset", "initial_state")


class SSMStateAdapter(AdapterLayer):
    """Attached to a mixer as `mixer.ssm_adapter`; holds per-adapter h', y' and h_0 for that layer."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        if is_mamba2(mixer):
            self.state_shape = (mixer.num_heads, mixer.head_dim, mixer.state_size)
            self.y_shape = (mixer.num_heads, mixer.head_dim)
        else:
            self.state_shape = (mixer.intermediate_size, mixer.state_size)
            self.y_shape = (mixer.intermediate_size,)
        self.device = mixer.A_log.device
        self.dtype = adapter_dtype(mixer.A_log)
        for kind in KINDS:
            setattr(self, kind, nn.ParameterDict())

    def add(self, kind: str, name: str) -> None:
        shape = self.y_shape if kind == "y_offset" else self.state_shape
        getattr(self, kind)[name] = nn.Parameter(torch.zeros(shape, device=self.device, dtype=self.dtype))


def _inject_state(mixer: nn.Module, args, kwargs):
    layer: SSMStateAdapter = mixer.ssm_adapter
    for kind in KINDS:
        t = layer.pick(getattr(layer, kind))
        if t is not None:
            kwargs[kind] = t
    return args, kwargs


def detach(mixer: nn.Module) -> None:
    """Remove the adapter and its hook (only ours: hooks others registered on the mixer stay)."""
    mixer.ssm_adapter.hook.remove()
    del mixer.ssm_adapter


def attach(mixer: nn.Module) -> SSMStateAdapter:
    if not hasattr(mixer, "ssm_adapter"):
        mixer.ssm_adapter = SSMStateAdapter(mixer)
        mixer.ssm_adapter.hook = mixer.register_forward_pre_hook(_inject_state, with_kwargs=True)
    return mixer.ssm_adapter


@dataclass
class StateOffsetConfig(PeftConfig):
    peft_type = "STATE_OFFSET"
    variant: str = "h"
    layers_to_transform: Optional[List[int]] = None


@dataclass
class InitialStateConfig(PeftConfig):
    peft_type = "INITIAL_STATE"
    layers_to_transform: Optional[List[int]] = None


def inject_state_offset(model: nn.Module, config: StateOffsetConfig, name: str) -> None:
    if config.variant not in ("h", "y"):
        raise ValueError(f"StateOffsetConfig: field 'variant' is {config.variant!r}; accepted values: 'h', 'y'")
    kind = "state_offset" if config.variant == "h" else "y_offset"
    for _, mixer in mixers(model, config.layers_to_transform):
        attach(mixer).add(kind, name)


def inject_initial_state(model: nn.Module, config: InitialStateConfig, name: str) -> None:
    for _, mixer in mixers(model, config.layers_to_transform):
        attach(mixer).add("initial_state", name)
