"""Mamba-2 (SSD) scan, one token with a cached state: the decode face."""
from __future__ import annotations

import math

import torch

from .._common import compute_dtype, per_row
from .naive import discretize_dt, heads_to_groups, readout


def ssd_step_reference(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    state_offset=None, y_offset=None,
):
    """state (b, h, p, n); x, z (b, h, p); dt (b, h); B, C (b, g, n). Returns (y (b, h, p), new state)."""
    ct = compute_dtype(x)
    batch, nheads, _ = x.shape
    xc = x.to(ct)
    d = discretize_dt(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus, dt_limit)
    Bh = heads_to_groups(B.to(ct), nheads)
    Ch = heads_to_groups(C.to(ct), nheads)
    h = torch.exp(d * A.to(ct))[..., None, None] * state.to(ct) + (d[..., None] * xc)[..., None] * Bh[:, :, None, :]
    off = per_row(state_offset, batch, 3)
    read = h if off is None else h + off.to(ct)
    y = torch.einsum("bhpn,bhn->bhp", read, Ch)
    return readout(y, xc, D, z, y_offset).to(x.dtype), h.to(state.dtype)
