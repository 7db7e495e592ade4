"""BitFit (Ben Zaken et al. 2022) on SSMs: train only biases — the conv1d and dt_proj biases of each mixer
(the State-offset paper's choice), optionally D. Stored as additive deltas so adapters can be switched,
disabled, saved alone and merged."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn as nn

from .config import AdapterError, PeftConfig
from .delta import delta_on
from .layer import adapter_dtype
from .targets import mixers


@dataclass
class BitFitConfig(PeftConfig):
    peft_type = "BITFIT"
    #: mixer parameters to tune: "conv1d.bias", "dt_proj.bias" (Mamba-1), "dt_bias" (Mamba-2), "D"
    parameters: Optional[List[str]] = None
    layers_to_transform: Optional[List[int]] = None


def _resolve(mixer: nn.Module, name: str):
    owner_path, _, tensor = name.rpartition(".")
    owner = mixer.get_submodule(owner_path) if owner_path else mixer
    if getattr(owner, tensor, None) is None:
        return None, tensor
    return owner, tensor


def inject(model: nn.Module, config: BitFitConfig, name: str) -> None:
    found = mixers(model, config.layers_to_transform)
    if config.parameters is None:
        sample = found[0][1]
        config.parameters = ["conv1d.bias", "dt_proj.bias"] if hasattr(sample, "dt_proj") else ["conv1d.bias", "dt_bias"]
    for path, mixer in found:
        for pname in config.parameters:
            owner, tensor = _resolve(mixer, pname)
            if owner is None:
                raise AdapterError(
                    f"BitFitConfig.parameters: {path}.{pname} does not exist (a module without a bias, or a "
                    f"name of the other architecture); candidates: "
                    f"{sorted(n for n, _ in mixer.named_parameters() if n.endswith('bias') or n == 'D')}"
                )
            base = getattr(owner, tensor)
            delta_on(owner, tensor).add(name, torch.zeros_like(base, dtype=adapter_dtype(base)))
