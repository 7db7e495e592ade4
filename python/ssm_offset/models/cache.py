"""The recurrent state of a model between calls: per layer, the convolution window and the SSM state.

Layout (both models):
    conv[i]  (batch, conv_channels, conv_kernel - 1)   the last K-1 inputs of layer i's causal conv,
             in the activation dtype (Mamba-1: conv_channels = D; Mamba-2: D + 2·G·N, i.e. x, B, C)
    ssm[i]   fp32 SSM state: Mamba-1 (batch, D, N); Mamba-2 (batch, H, P, N)
A fresh cache holds None for every layer; a mixer fills its entry (rebinding it, never writing into a
tensor in place, so autograd through a cached prefill stays correct). `seqlen` counts the tokens seen.

TransMamba (`TransMambaCache`) adds, per layer, the attention KV cache of the tokens before the layer's
TransPoint, and per batch row the number of tokens seen (rows of a ragged batch sit at different positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

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

    def advance(self, length: int) -> None:
        """Called by the model once every layer has seen `length` more tokens."""
        self.seqlen += length

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


def stack_rows(parts: Sequence[Tuple[Sequence[int], Optional[torch.Tensor]]], batch: int,
               pad_time: bool = False) -> Optional[torch.Tensor]:
    """One (batch, ...) tensor from pieces holding the given rows; a piece without a tensor (None) is zeros.

    pad_time: dim 1 is a time axis of per-row valid length (a KV cache): shorter pieces are zero-padded to
    the longest. None when no piece has a tensor. Out of place, so autograd through the pieces is kept.
    """
    present = [t for _, t in parts if t is not None]
    if not present:
        return None
    ref = present[0]
    length = max(t.shape[1] for t in present) if pad_time else None
    rows: List[int] = []
    chunks = []
    for idx, t in parts:
        idx = list(idx)
        if t is None:
            t = ref.new_zeros(len(idx), *((length,) if pad_time else ()), *ref.shape[1 + pad_time :])
        elif pad_time and t.shape[1] < length:
            t = torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1], *t.shape[2:])], dim=1)
        rows += idx
        chunks.append(t)
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if rows != list(range(batch)):
        out = out[torch.argsort(torch.tensor(rows, device=out.device))]
    return out


@dataclass
class TransMambaCache(Cache):
    """Cache of a TransMamba model: conv and SSM state as `Cache`, plus per layer i the attention KV cache.

    key[i]    (batch, T, G, N)   B after the conv (the attention key, before any rotary embedding)
    value[i]  (batch, T, H, P)   x after the conv (the attention value)
    dt[i]     (batch, T, H)      dt as in_proj gives it (before dt_bias / softplus): with key and value this
                                 is all the Memory Converter needs to rebuild the SSM state of the prefix
    positions (batch,) ints      tokens seen per row (host list; ragged after `cat` of different prompts)
    transpoints[i]               the TransPoint the layer was filled with (a schedule change mid-sequence
                                 is refused, since the cached form would no longer match)
    Row r of layer i is in one of two forms: positions[r] <= P_i — KV cache of its positions[r] tokens
    (entries beyond that are zero padding), ssm[i][r] meaningless; positions[r] > P_i — SSM state in ssm[i][r],
    KV entries meaningless. A layer's KV tensors are dropped (None) once every row is past its TransPoint,
    so decoding beyond P costs O(1) memory per token.
    """

    key: List[Optional[torch.Tensor]] = None
    value: List[Optional[torch.Tensor]] = None
    dt: List[Optional[torch.Tensor]] = None
    positions: Optional[List[int]] = None
    transpoints: List[Optional[int]] = None

    @classmethod
    def empty(cls, num_layers: int) -> "TransMambaCache":
        none = lambda: [None] * num_layers  # noqa: E731
        return cls(conv=none(), ssm=none(), key=none(), value=none(), dt=none(), transpoints=none())

    @property
    def is_fresh(self) -> bool:
        return self.positions is None

    @property
    def batch_size(self) -> int:
        if self.is_fresh:
            raise ValueError("a fresh cache has no batch size yet")
        return len(self.positions)

    def advance(self, length: int) -> None:
        super().advance(length)
        if self.positions is None:
            self.positions = [0] * next(c for c in self.conv if c is not None).shape[0]
        self.positions = [p + length for p in self.positions]

    @classmethod
    def cat(cls, caches: Sequence["TransMambaCache"]) -> "TransMambaCache":
        if not caches or any(c.is_fresh or c.num_layers != caches[0].num_layers for c in caches):
            raise ValueError("TransMambaCache.cat needs filled caches of the same number of layers")
        n = caches[0].num_layers
        for i in range(n):
            if len({c.transpoints[i] for c in caches}) > 1:
                raise ValueError(f"TransMambaCache.cat: layer {i} was filled with different TransPoints "
                                 f"{[c.transpoints[i] for c in caches]}")
        spans, start = [], 0
        for c in caches:
            spans.append(range(start, start + c.batch_size))
            start += c.batch_size

        def stacked(name: str, i: int, pad_time: bool = False):
            return stack_rows([(r, getattr(c, name)[i]) for r, c in zip(spans, caches)], start, pad_time)

        positions = [p for c in caches for p in c.positions]
        return cls(
            conv=[stacked("conv", i) for i in range(n)],
            ssm=[stacked("ssm", i) for i in range(n)],
            key=[stacked("key", i, True) for i in range(n)],
            value=[stacked("value", i, True) for i in range(n)],
            dt=[stacked("dt", i, True) for i in range(n)],
            positions=positions,
            transpoints=list(caches[0].transpoints),
            seqlen=positions[0] if len(set(positions)) == 1 else -1,
        )

    def select(self, rows) -> "TransMambaCache":
        rows = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda ts: [None if t is None else t[rows.to(t.device)] for t in ts]  # noqa: E731
        return TransMambaCache(
            conv=pick(self.conv), ssm=pick(self.ssm), key=pick(self.key), value=pick(self.value), dt=pick(self.dt),
            positions=None if self.positions is None else [self.positions[r] for r in rows.tolist()],
            transpoints=list(self.transpoints), seqlen=self.seqlen,
        )


__all__ = ["Cache", "TransMambaCache", "stack_rows"]
