"""The recurrent state of a model between calls: per layer, the convolution window and the SSM state.

Layout (both models):
    conv[i]  (batch, conv_channels, conv_kernel - 1)   the last K-1 inputs of layer i's causal conv,
             in the activation dtype (Mamba-1: conv_channels = D; Mamba-2: D + 2·G·N, i.e. x, B, C)
    ssm[i]   fp32 SSM state: Mamba-1 (batch, D, N); Mamba-2 (batch, H, P, N)
A fresh cache holds None for every layer; a mixer fills its entry (rebinding it, never writing into a
tensor in place, so autograd through a cached prefill stays correct). `seqlen` counts the tokens seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass
class Cache:
    conv: List[Optional[torch.Tensor]]
    ssm: List[Optional[torch.Tensor]]
    seqlen: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> "Cache":
        return cls(conv=[None] * num_layers, ssm=[None] * num_layers)

    @property
    def num_layers(self) -> int:
        return len(self.ssm)

    @property
    def is_fresh(self) -> bool:
        return all(s is None for s in self.ssm)

    @property
    def batch_size(self) -> int:
        if self.is_fresh:
            raise ValueError("a fresh cache has no batch size yet")
        return next(s for s in self.ssm if s is not None).shape[0]

    @classmethod
    def cat(cls, caches: Sequence["Cache"]) -> "Cache":
        """Stack caches of separately prefilled rows into one batch (rows in the given order)."""
        if not caches or any(c.is_fresh or c.num_layers != caches[0].num_layers for c in caches):
            raise ValueError("Cache.cat needs filled caches of the same number of layers")
        n = caches[0].num_layers
        return cls(
            conv=[torch.cat([c.conv[i] for c in caches]) for i in range(n)],
            ssm=[torch.cat([c.ssm[i] for c in caches]) for i in range(n)],
            # rows of different prompt lengths: seqlen is only meaningful when they agree
            seqlen=caches[0].seqlen if all(c.seqlen == caches[0].seqlen for c in caches) else -1,
        )

    def select(self, rows: torch.Tensor) -> "Cache":
        """The cache of the given batch rows (an index tensor or list), e.g. to drop finished sequences."""
        return Cache(
            conv=[None if t is None else t[rows] for t in self.conv],
            ssm=[None if t is None else t[rows] for t in self.ssm],
            seqlen=self.seqlen,
        )


__all__ = ["Cache"]
