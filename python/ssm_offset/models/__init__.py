"""Mamba-1, Mamba-2 and TransMamba causal language models in PyTorch, calling only the `ssm_offset.ops` scans.

    MambaForCausalLM, Mamba2ForCausalLM   models (transformers' module and parameter names)
    TransMambaForCausalLM                 Mamba-2 layers that are attention before their TransPoint (transmamba.py)
    MambaConfig, Mamba2Config, TransMambaConfig   their configs (transformers' field names)
    load_model(path_or_hub_id)            Hugging Face or mamba_ssm checkpoints, local or from the Hub
    model_from_config(config)             a random model of the architecture the config names
    model.save_pretrained(dir)            Hugging Face format
    model.generate(prompts, n, ...)       greedy / sampled generation (generation.generate)
    Cache                                 per-layer conv window + SSM state (prefill returns it, steps update it)
    TransMambaCache                       + per-layer attention KV cache before the TransPoint, per-row positions
"""
from .auto import MODEL_CLASSES, model_from_config
from .base import CausalLM, CausalLMOutput
from .cache import Cache, TransMambaCache
from .config import (
    ConfigError, Mamba2Config, MambaConfig, TransMambaConfig, config_from_hf_dict, config_from_mamba_ssm_dict,
    geometric_transpoints,
)
from .generation import beam_search, generate
from .io import CheckpointError, checkpoint_sha256, from_transformers, load_model, save_pretrained
from .mamba import MambaForCausalLM, MambaMixer
from .mamba2 import Mamba2ForCausalLM, Mamba2Mixer
from .transmamba import TransMambaForCausalLM, TransMambaMixer

__all__ = [
    "MambaConfig", "Mamba2Config", "MambaForCausalLM", "Mamba2ForCausalLM", "MambaMixer", "Mamba2Mixer",
    "CausalLM", "CausalLMOutput", "Cache", "load_model", "save_pretrained", "model_from_config", "generate",
    "beam_search", "from_transformers", "MODEL_CLASSES", "ConfigError", "CheckpointError", "config_from_hf_dict",
    "config_from_mamba_ssm_dict", "TransMambaConfig", "TransMambaForCausalLM", "TransMambaMixer", "TransMambaCache",
    "geometric_transpoints", "checkpoint_sha256",
]
