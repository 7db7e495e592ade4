"""Mamba-2 (SSD) scan, sequential reference: the readable oracle for the chunked path.

Per head h (scalar decay a_h = A[h]), state P×N:
    Δ_t = clamp(softplus(dt_t + dt_bias), dt_limit)
    h_t = exp(Δ_t a_h) h_{t-1} + Δ_t x_t B_tᵀ                 h_0 = initial_state (or 0)
    y_t = (h_t + h') C_t + D x_t + y'                         h' = state_offset, y' = y_offset
    out_t = y_t ⊙ silu(z_t)  (only when z is given; Mamba-2 usually gates in its RMSNorm instead)
Head h reads B/C group h // (H / G). With `seq_idx` (batch, L) the state restarts from initial_state at each
document's first token (mamba_ssm's `seq_idx` convention).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._common import compute_dtype, document_starts, per_row


def discretize_dt(dt, dt_bias, softplus: bool, dt_limit: Tuple[float, float]):
    if dt_bias is not None:
        dt = dt + dt_bias
    if softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi != math.inf:
        dt = dt.clamp(min=lo, max=hi)
    return dt


def heads_to_groups(BC: torch.Tensor, nheads: int) -> torch.Tensor:
    """(..., G, N) → (..., H, N)."""
    return BC.repeat_interleave(nheads // BC.shape[-2], dim=-2)


def readout(y, x, D, z, y_offset):
    """y + D x + y', then the optional z gate; y and x are (..., H, P)."""
    if D is not None:
        Dc = D.to(y.dtype)
        y = y + x * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if y_offset is not None:
        yo = y_offset.to(y.dtype)
        # (H, P) shared, or (B, H, P) per row; broadcast over any time axis in between
        y = y + (yo if yo.dim() == 2 else yo.view(yo.shape[0], *([1] * (y.dim() - 3)), *yo.shape[1:]))
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def ssd_naive(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    initial_state=None, state_offset=None, y_offset=None, seq_idx=None,
):
    """x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n). Returns (y (b, l, h, p), final state (b, h, p, n))."""
    ct = compute_dtype(x)
    batch, length, nheads, headdim = x.shape
    xc = x.to(ct)
    dtc = discretize_dt(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus, dt_limit)
    Bh = heads_to_groups(B.to(ct), nheads)
    Ch = heads_to_groups(C.to(ct), nheads)
    h0 = per_row(initial_state, batch, 3)
    start = x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=ct) if h0 is None else h0.to(ct)
    h = start.clone()
    resets = document_starts(seq_idx)
    off = per_row(state_offset, batch, 3)
    ys = []
    for t in range(length):
        if resets is not None and t > 0:
            h = torch.where(resets[:, t, None, None, None], start, h)
        d = dtc[:, t]  # (b, h)
        h = torch.exp(d * A.to(ct))[..., None, None] * h + (d[..., None] * xc[:, t])[..., None] * Bh[:, t, :, None, :]
        read = h if off is None else h + off.to(ct)
        ys.append(torch.einsum("bhpn,bhn->bhp", read, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xc.new_zeros(batch, 0, nheads, headdim)
    return readout(y, xc, D, z, y_offset).to(x.dtype), h
