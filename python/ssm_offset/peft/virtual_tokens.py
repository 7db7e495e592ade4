"""Prompt Tuning and Prefix-Tuning for SSMs: learned virtual tokens in front of every sequence.

Prompt Tuning (Lester et al. 2021) prepends n trainable input embeddings. Prefix-Tuning (Li & Liang 2021),
carried over to an SSM, gives every layer its own n virtual inputs: each mixer first reads its virtual
inputs, and the real tokens start from the conv window and SSM state that left — the only way virtual
tokens can act on an SSM (the State-offset paper shows Prefix-Tuning on SSMs is Initial State Tuning plus a
conv state). Optionally the per-layer inputs come from a small MLP (reparameterisation), which trains more
stably. Both change the model's outputs from the start, unlike the other methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .config import PeftConfig
from .layer import AdapterLayer


@dataclass
class PromptTuningConfig(PeftConfig):
    peft_type = "PROMPT_TUNING"
    num_virtual_tokens: int = 16
    #: "random_vocab": copies of random vocabulary embeddings (better start than noise); "normal": N(0, 0.02)
    prompt_init: str = "random_vocab"
    init_seed: int = 0


@dataclass
class PrefixTuningConfig(PeftConfig):
    peft_type = "PREFIX_TUNING"
    num_virtual_tokens: int = 16
    prefix_projection: bool = False
    encoder_hidden_size: Optional[int] = None
    init_seed: int = 0


class VirtualTokens(AdapterLayer):
    """Held by the PeftModel itself (not inside the base model): prompt embeddings and prefix encoders."""

    mixable_per_row = False

    def __init__(self):
        super().__init__()
        self.prompt = nn.ParameterDict()
        self.prefix = nn.ParameterDict()  # (layers, n, hidden), or (n, hidden) inputs of the MLP
        self.prefix_mlp = nn.ModuleDict()

    def kind(self) -> Optional[str]:
        if self.disabled or self.active is None:
            return None
        if self.active in self.prompt:
            return "prompt"
        if self.active in self.prefix:
            return "prefix"
        return None

    def prefix_inputs(self, num_layers: int) -> torch.Tensor:
        """(layers, n, hidden): each layer's virtual inputs."""
        p = self.prefix[self.active]
        if self.active in self.prefix_mlp:
            n, hidden = p.shape
            return self.prefix_mlp[self.active](p).view(n, num_layers, hidden).transpose(0, 1)
        return p


def add_prompt(layer: VirtualTokens, model: nn.Module, config: PromptTuningConfig, name: str) -> None:
    emb = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(config.init_seed)
    n = config.num_virtual_tokens
    if config.prompt_init == "random_vocab":
        ids = torch.randint(0, emb.shape[0], (n,), generator=g)
        init = emb.detach()[ids.to(emb.device)].float().clone()
    elif config.prompt_init == "normal":
        init = torch.randn(n, emb.shape[1], generator=g).to(emb.device) * 0.02
    else:
        raise ValueError(f"PromptTuningConfig: field 'prompt_init' is {config.prompt_init!r}; accepted: 'random_vocab', 'normal'")
    layer.prompt[name] = nn.Parameter(init)


def add_prefix(layer: VirtualTokens, model: nn.Module, config: PrefixTuningConfig, name: str) -> None:
    cfg = model.config
    emb = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(config.init_seed)
    n, hidden, layers = config.num_virtual_tokens, cfg.hidden_size, cfg.num_hidden_layers
    if config.prefix_projection:
        width = config.encoder_hidden_size or hidden
        layer.prefix[name] = nn.Parameter((torch.randn(n, hidden, generator=g) * 0.02).to(emb.device))
        mlp = nn.Sequential(nn.Linear(hidden, width), nn.Tanh(), nn.Linear(width, layers * hidden))
        layer.prefix_mlp[name] = mlp.to(emb.device)
    else:
        ids = torch.randint(0, emb.shape[0], (layers, n), generator=g)
        layer.prefix[name] = nn.Parameter(emb.detach()[ids.to(emb.device)].float().clone())


def prefix_cache(model: nn.Module, inputs: torch.Tensor, batch: int):
    """Run each layer's mixer over its virtual inputs; the resulting cache (conv window + SSM state per layer),
    repeated over the batch, is where the real tokens start. Differentiable: the mixers rebind cache entries."""
    cache = model.new_cache()
    for i, block in enumerate(model.backbone.layers):
        x = inputs[i][None].to(block.norm.weight.dtype)
        block.mixer(block.norm(x), cache=cache)
    cache.seqlen = inputs.shape[1]
    return cache.select(torch.zeros(batch, dtype=torch.long, device=inputs.device))
