"""Mamba-2 (SSD) scan, chunked form (Dao & Gu 2024): the CPU implementation of the op.

With a_t = Δ_t a_h and chunks of Q steps:
  intra-chunk  Y_diag = ((C Bᵀ) ∘ L) (Δ x),           L[t, s] = exp(Σ_{s<r≤t} a_r) for s ≤ t
  chunk states S_c    = Σ_s exp(Σ_{s<r≤end} a_r) Δ_s x_s B_sᵀ
  across chunks h_c   = exp(Σ_chunk a) h_{c-1} + S_c, starting from initial_state
  inter-chunk  Y_off  = exp(cumsum a) (C · h_{c-1})
and the State-offset term is one more contraction, C_t · h', since h' does not vary with t.
The sequence is padded to a multiple of Q with Δ = 0, which leaves the state unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._common import compute_dtype, per_row
from .naive import discretize_dt, heads_to_groups, readout


def ssd_chunked(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    initial_state=None, state_offset=None, y_offset=None, chunk_size: int = 64,
):
    ct = compute_dtype(x)
    batch, length, nheads, headdim = x.shape
    nstate = B.shape[-1]
    xc = x.to(ct)
    dtc = discretize_dt(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus, dt_limit)
    Bh = heads_to_groups(B.to(ct), nheads)
    Ch = heads_to_groups(C.to(ct), nheads)
    q = min(chunk_size, max(length, 1))
    pad = (-length) % q
    xdt = xc * dtc[..., None]
    a = dtc * A.to(ct)
    if pad:
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    nchunks = (length + pad) // q
    # (b, c, q, h, ·) chunked views; a → (b, h, c, q)
    xdt = xdt.view(batch, nchunks, q, nheads, headdim)
    Bc = Bh.view(batch, nchunks, q, nheads, nstate)
    Cc = Ch.view(batch, nchunks, q, nheads, nstate)
    a = a.view(batch, nchunks, q, nheads).permute(0, 3, 1, 2)
    acum = a.cumsum(-1)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    L = (acum[..., :, None] - acum[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, xdt)
    decay_to_end = (acum[..., -1:] - acum).exp()
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xdt)
    h0 = per_row(initial_state, batch, 3)
    h = xc.new_zeros(batch, nheads, headdim, nstate) if h0 is None else h0.to(ct).clone()
    chunk_decay = acum[..., -1].exp()  # (b, h, c)
    starts = []
    for c in range(nchunks):
        starts.append(h)
        h = chunk_decay[:, :, c, None, None] * h + chunk_states[:, c]
    start = torch.stack(starts, dim=1)  # (b, c, h, p, n)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, start, acum.exp())
    y = y.reshape(batch, nchunks * q, nheads, headdim)[:, :length]
    off = per_row(state_offset, batch, 3)
    if off is not None:
        y = y + torch.einsum("blhn,bhpn->blhp", Ch[:, :length], off.to(ct))
    return readout(y, xc, D, z, y_offset).to(x.dtype), h
