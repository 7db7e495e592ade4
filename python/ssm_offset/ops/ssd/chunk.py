"""Mamba-2 (SSD) scan, chunked form (Dao & Gu 2024): the CPU implementation of the op.

With a_t = Δ_t a_h and chunks of Q steps:
  intra-chunk  Y_diag = ((C Bᵀ) ∘ L) (Δ x),           L[t, s] = exp(Σ_{s<r≤t} a_r) for s ≤ t
  chunk states S_c    = Σ_s exp(Σ_{s<r≤end} a_r) Δ_s x_s B_sᵀ
  across chunks h_c   = exp(Σ_chunk a) h_{c-1} + S_c, starting from initial_state
  inter-chunk  Y_off  = exp(cumsum a) (C · h_{c-1})
and the State-offset term is one more contraction, C_t · h', since h' does not vary with t.
The sequence is padded to a multiple of Q with Δ = 0, which leaves the state unchanged.

Document boundaries (`seq_idx`): every term above is masked to pairs of positions in the same document, the
state carried into a chunk is dropped where its document has ended, and the initial state, which each
document restarts from, reaches position t of a document begun at s > 0 as exp(Σ_{s≤r≤t} a_r) C_t·h_0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._common import compute_dtype, per_row
from .naive import discretize_dt, heads_to_groups, readout


def ssd_chunked(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    initial_state=None, state_offset=None, y_offset=None, chunk_size: int = 64, seq_idx=None,
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
    if seq_idx is not None:
        seg = F.pad(seq_idx, (0, pad), value=0) if pad else seq_idx
        if pad:
            seg[:, length:] = seq_idx[:, -1:]
        seg = seg.view(batch, nchunks, q)
        same = seg[:, :, :, None] == seg[:, :, None, :]  # (b, c, t, s)
        keep = (causal & same)[:, None]  # (b, 1, c, t, s)
        entering = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)  # document of the state entering chunk c
        continues = seg == entering[..., None]  # (b, c, t): position t continues that document
    else:
        keep = causal
    L = (acum[..., :, None] - acum[..., None, :]).masked_fill(~keep, float("-inf")).exp()
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, xdt)
    decay_to_end = (acum[..., -1:] - acum).exp()
    if seq_idx is not None:
        decay_to_end = decay_to_end * (seg == seg[..., -1:])[:, None].to(ct)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xdt)
    h0 = per_row(initial_state, batch, 3)
    h = xc.new_zeros(batch, nheads, headdim, nstate) if h0 is None else h0.to(ct).clone()
    chunk_decay = acum[..., -1].exp()  # (b, h, c)
    starts = []
    for c in range(nchunks):
        starts.append(h)
        carried = chunk_decay[:, :, c, None, None] * h
        if seq_idx is not None:  # the entering document ended inside this chunk: its state stops here
            carried = carried * continues[:, c, -1].to(ct)[:, None, None, None]
        h = carried + chunk_states[:, c]
    start = torch.stack(starts, dim=1)  # (b, c, h, p, n)
    reach = acum.exp()
    if seq_idx is not None:
        reach = reach * continues[:, None].to(ct)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, start, reach)
    y = y.reshape(batch, nchunks * q, nheads, headdim)[:, :length]
    if seq_idx is not None and h0 is not None:
        restart, h = _restarted_initial_state(seq_idx, dtc * A.to(ct), h0.to(ct), Ch[:, :length], h)
        y = y + restart
    off = per_row(state_offset, batch, 3)
    if off is not None:
        y = y + torch.einsum("blhn,bhpn->blhp", Ch[:, :length], off.to(ct))
    return readout(y, xc, D, z, y_offset).to(x.dtype), h


def _restarted_initial_state(seq_idx, a, h0, C, final):
    """The initial state re-applied at every document start s > 0: y_t += exp(Σ_{s≤r≤t} a_r) C_t·h_0 for t in that
    document, and the same decayed h_0 joins the final state when the last document began at s > 0.
    The cumulative sums run in fp64 so that differences of long sums stay exact."""
    batch, length = seq_idx.shape
    S = a.double().cumsum(1)  # (b, l, h)
    pos = torch.arange(length, device=seq_idx.device).expand(batch, length)
    first = torch.zeros_like(seq_idx, dtype=torch.bool)
    first[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    doc_start = torch.where(first, pos, torch.zeros_like(pos)).cummax(1).values  # (b, l): start of t's document
    S_before = torch.where(doc_start[..., None] > 0, S.gather(1, (doc_start - 1).clamp(min=0)[..., None].expand_as(S)), S)
    decay = torch.where(doc_start[..., None] > 0, (S - S_before).exp(), torch.zeros_like(S)).to(C.dtype)  # (b, l, h)
    y = torch.einsum("blhn,bhpn,blh->blhp", C, h0.expand(batch, *h0.shape[-3:]), decay)
    final = final + decay[:, -1, :, None, None] * h0.expand(batch, *h0.shape[-3:])
    return y, final
