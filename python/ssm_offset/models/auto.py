"""Dispatch on the config: one table from config class to model class."""
from __future__ import annotations

from typing import Dict, Type

from .base import CausalLM
from .config import Mamba2Config, MambaConfig, SSMConfig, TransMambaConfig
from .mamba import MambaForCausalLM
from .mamba2 import Mamba2ForCausalLM
from .transmamba import TransMambaForCausalLM

MODEL_CLASSES: Dict[type, Type[CausalLM]] = {
    MambaConfig: MambaForCausalLM, Mamba2Config: Mamba2ForCausalLM, TransMambaConfig: TransMambaForCausalLM,
}


def model_from_config(config: SSMConfig) -> CausalLM:
    """A randomly initialised model of the architecture the config names."""
    try:
        cls = MODEL_CLASSES[type(config)]
    except KeyError:
        raise TypeError(
            f"no model for config type {type(config).__name__}; accepted: {[c.__name__ for c in MODEL_CLASSES]}"
        ) from None
    return cls(config)


__all__ = ["MODEL_CLASSES", "model_from_config"]
