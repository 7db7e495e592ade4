"""Shared by the model tests (imported, not collected: no test_ prefix)."""
from __future__ import annotations

import math

import torch


def spread_weights(model, seed: int = 0):
    """Re-draws a tiny Mamba-family model's weights spread out enough that every path matters and greedy decoding
    does not collapse (transformers' models and ours use the same parameter names)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("A_log"):
                p.add_(torch.rand(p.shape, generator=g) * 0.5)
            elif p.dim() >= 2:
                # small embeddings, strong mixers: with a tied head a weak mixer just echoes the last token
                scale = 0.1 if "embed" in pname else (3.0 if "out_proj" in pname else 1.0) / math.sqrt(p.shape[-1])
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model
