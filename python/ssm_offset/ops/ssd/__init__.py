"""Mamba-2 (SSD) scan: one dispatcher over the op (chunked reference on CPU, kernels where registered)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .._common import check_seq_idx, check_shape
from . import op as _op
from .chunk import ssd_chunked
from .naive import ssd_naive
from .step import ssd_step_reference

__all__ = ["ssd_scan", "ssd_step", "ssd_chunked", "ssd_naive", "ssd_step_reference"]


def _check(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, lead: Tuple[int, ...]):
    batch = x.shape[0]
    nheads, headdim = x.shape[-2:]
    check_shape("dt", dt, (*lead, nheads))
    check_shape("A", A, (nheads,))
    if B.dim() != len(lead) + 2:
        raise ValueError(f"B: got shape {tuple(B.shape)}, expected ({', '.join(map(str, lead))}, groups, N)")
    groups, nstate = B.shape[-2:]
    if nheads % groups:
        raise ValueError(f"B: {groups} groups do not divide the {nheads} heads")
    check_shape("B", B, (*lead, groups, nstate))
    check_shape("C", C, (*lead, groups, nstate))
    check_shape("D", D, (nheads,), (nheads, headdim))
    check_shape("z", z, x.shape)
    check_shape("dt_bias", dt_bias, (nheads,))
    shared = (nheads, headdim, nstate)
    check_shape("initial_state", initial_state, shared, (batch, *shared))
    check_shape("state_offset", state_offset, shared, (batch, *shared))
    check_shape("y_offset", y_offset, (nheads, headdim), (batch, nheads, headdim))


def ssd_scan(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False, dt_limit: Tuple[float, float] = (0.0, math.inf),
    initial_state: Optional[torch.Tensor] = None, state_offset: Optional[torch.Tensor] = None,
    y_offset: Optional[torch.Tensor] = None, chunk_size: int = 64, return_final_state: bool = False,
    seq_idx: Optional[torch.Tensor] = None,
):
    """Mamba-2 SSD scan with state offset h', learned initial state and y offset (layout of mamba_ssm's
    `mamba_chunk_scan_combined`).

    x, z: (batch, L, H, P); dt: (batch, L, H); A, dt_bias: (H,); B, C: (batch, L, G, N); D: (H,) or (H, P);
    initial_state, state_offset: (H, P, N) or (batch, H, P, N); y_offset: (H, P) or (batch, H, P).
    seq_idx: (batch, L) integer document index, non-decreasing: the state restarts from initial_state (or zero)
    at each document's first token (packed sequences; mamba_ssm's convention).
    Returns y (batch, L, H, P) and, if asked, the fp32 final state (batch, H, P, N).
    """
    if x.dim() != 4:
        raise ValueError(f"x: got shape {tuple(x.shape)}, expected (batch, L, H, P)")
    _check(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, lead=tuple(x.shape[:2]))
    check_seq_idx(seq_idx, x.shape[0], x.shape[1])
    y, final, *_stages = torch.ops.ssm_offset.ssd_fwd(
        x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset,
        dt_softplus, float(dt_limit[0]), float(dt_limit[1]), int(chunk_size), seq_idx,
    )
    return (y, final) if return_final_state else y


def ssd_step(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
    state_offset=None, y_offset=None,
):
    """One decode step: state (batch, H, P, N), x/z (batch, H, P), dt (batch, H), B/C (batch, G, N)."""
    if x.dim() != 3:
        raise ValueError(f"x: got shape {tuple(x.shape)}, expected (batch, H, P) for one step")
    _check(x, dt, A, B, C, D, z, dt_bias, None, state_offset, y_offset, lead=(x.shape[0],))
    check_shape("state", state, (*x.shape, B.shape[-1]))
    return torch.ops.ssm_offset.ssd_step(
        state, x, dt, A, B, C, D, z, dt_bias, state_offset, y_offset, dt_softplus, float(dt_limit[0]), float(dt_limit[1])
    )
