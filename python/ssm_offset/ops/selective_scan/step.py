"""Mamba-1 selective scan, one token with a cached state: the decode face."""
from __future__ import annotations

import torch

from .._common import compute_dtype, per_row
from .naive import discretize, readout


def selective_scan_step_reference(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    state_offset=None, y_offset=None,
):
    """state (batch, D, N); u, delta, z (batch, D); B, C (batch, N) or (batch, G, N).

    Returns (y (batch, D), new_state); the new state is fp32 like the cached one.
    """
    ct = compute_dtype(u)
    batch, dim = u.shape
    uc = u.to(ct)
    dt = discretize(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    Bx = B.to(ct)
    Cx = C.to(ct)
    if Bx.dim() == 2:
        Bx, Cx = Bx[:, None, :], Cx[:, None, :]
    rep = dim // Bx.shape[1]
    Bx = Bx.repeat_interleave(rep, dim=1)
    Cx = Cx.repeat_interleave(rep, dim=1)
    h = torch.exp(dt[..., None] * A.to(ct)) * state.to(ct) + dt[..., None] * Bx * uc[..., None]
    off = per_row(state_offset, batch, 2)
    read = h if off is None else h + off.to(ct)
    y = readout((read * Cx).sum(-1), uc, D, z, y_offset, dim_axis=1)
    return y.to(u.dtype), h.to(state.dtype)
