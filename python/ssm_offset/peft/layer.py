"""The adapter layer every method builds on: parameters for many named adapters in one module, one of them
active (or a per-row mixture of several), and a switch to disable all of them.

Parameters live in `nn.ParameterDict` / `nn.ModuleDict` keyed by adapter name, so a parameter's name holds the
adapter name as one component (`...lora_A.default.weight`); dropping that component gives the key saved in
`adapter_model.safetensors` (`...lora_A.weight`), which is Hugging Face peft's convention.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn


class AdapterLayer(nn.Module):
    #: whether this layer can give each batch row its own (mixture of) adapters
    mixable_per_row: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.active: Optional[str] = None
        self.disabled = False
        self.row_names: Optional[List[str]] = None
        self.row_weights: Optional[torch.Tensor] = None

    # -- which parameters belong to an adapter ------------------------------------------------------------
    def adapter_names(self) -> List[str]:
        names = []
        for _, child in self.named_children():
            if isinstance(child, (nn.ModuleDict, nn.ParameterDict)):
                names += [k for k in child.keys() if k not in names]
        return names

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for pname, p in self.named_parameters():
            if name in pname.split("."):
                yield p

    def trainable_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """What training this adapter updates (a method with phases, SDT, narrows it)."""
        return self.adapter_parameters(name)

    def delete_adapter(self, name: str) -> None:
        for _, child in list(self.named_children()):
            if isinstance(child, (nn.ModuleDict, nn.ParameterDict)) and name in child:
                del child[name]

    # -- what the forward uses ------------------------------------------------------------------------------
    def pick(self, store) -> Optional[torch.Tensor]:
        """The active adapter's tensor from a ParameterDict, or the per-row mixture Σ_k w[b, k] · p_k
        (shape (batch, *p.shape)), or None when disabled or the active adapter has no entry here."""
        if self.disabled:
            return None
        if self.row_weights is not None:
            present = [n in store for n in self.row_names]
            if not any(present):
                return None
            if not all(present):
                raise ValueError(f"{type(self).__name__}: adapters {self.row_names} do not all have this tensor; "
                                 "a row mixture needs adapters of the same method")
            stacked = torch.stack([store[n] for n in self.row_names])  # (K, ...)
            w = self.row_weights.to(device=stacked.device, dtype=stacked.dtype)
            return torch.einsum("bk,k...->b...", w, stacked)
        if self.active is not None and self.active in store:
            return store[self.active]
        return None


def set_rows(layer: AdapterLayer, names: Optional[Sequence[str]], weights: Optional[torch.Tensor]) -> None:
    if names is not None and not layer.mixable_per_row and len(set(names)) > 1:
        raise ValueError(f"{type(layer).__name__} cannot give batch rows different adapters")
    layer.row_names = None if names is None else list(names)
    layer.row_weights = weights


def saved_key(param_name: str, adapter: str) -> Optional[str]:
    parts = param_name.split(".")
    if adapter not in parts:
        return None
    parts.remove(adapter)
    return ".".join(parts)


def adapter_state(layers: Dict[str, AdapterLayer], adapter: str) -> Dict[str, torch.Tensor]:
    """{saved key: tensor} of one adapter over the given {module path: layer} (parameters and buffers)."""
    out = {}
    for path, layer in layers.items():
        for name, t in layer.state_dict(keep_vars=True).items():
            key = saved_key(name, adapter)
            if key is not None:
                out[f"{path}.{key}" if path else key] = t
    return out


def adapter_dtype(t: torch.Tensor) -> torch.dtype:
    """Adapter tensors are kept in fp32 over a bf16/fp16/fp32 model (small, and precise for the optimiser),
    and in fp64 over an fp64 model."""
    return torch.promote_types(t.dtype, torch.float32)
