"""Mamba-1 selective scan: one dispatcher over the op (reference on CPU, kernels where registered)."""
from __future__ import annotations

from typing import Optional

import torch

from .._common import check_seq_idx, check_shape
from . import op as _op
from .naive import selective_scan_naive
from .step import selective_scan_step_reference

__all__ = ["selective_scan", "selective_scan_step", "selective_scan_naive", "selective_scan_step_reference"]


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset, time_axis: bool):
    batch, dim = u.shape[:2]
    nstate = A.shape[-1]
    tail = tuple(u.shape[2:]) if time_axis else ()
    check_shape("delta", delta, u.shape)
    check_shape("A", A, (dim, nstate))
    if B.dim() == 2 + len(tail) + 1:
        groups = B.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"B: {groups} groups do not divide the {dim} channels")
        check_shape("B", B, (batch, groups, nstate, *tail))
        check_shape("C", C, (batch, groups, nstate, *tail))
    else:
        check_shape("B", B, (batch, nstate, *tail))
        check_shape("C", C, (batch, nstate, *tail))
    check_shape("D", D, (dim,))
    check_shape("z", z, u.shape)
    check_shape("delta_bias", delta_bias, (dim,))
    check_shape("initial_state", initial_state, (dim, nstate), (batch, dim, nstate))
    check_shape("state_offset", state_offset, (dim, nstate), (batch, dim, nstate))
    check_shape("y_offset", y_offset, (dim,), (batch, dim))


def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False, initial_state: Optional[torch.Tensor] = None,
    state_offset: Optional[torch.Tensor] = None, y_offset: Optional[torch.Tensor] = None,
    return_final_state: bool = False, seq_idx: Optional[torch.Tensor] = None,
):
    """Mamba-1 selective scan with State-offset Tuning's offset h', a learned initial state and a y offset.

    u, delta, z: (batch, D, L); A: (D, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (D,);
    initial_state, state_offset: (D, N) shared or (batch, D, N) per row; y_offset: (D,) or (batch, D).
    seq_idx: (batch, L) integer document index per position, non-decreasing (mamba_ssm's convention): the state
    restarts from initial_state (or zero) at each document's first token, for packed sequences.
    Returns y (batch, D, L) in u's dtype, and the fp32 final state (batch, D, N) if asked.
    """
    if u.dim() != 3:
        raise ValueError(f"u: got shape {tuple(u.shape)}, expected (batch, D, L)")
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset, time_axis=True)
    check_seq_idx(seq_idx, u.shape[0], u.shape[2])
    y, final, _ = torch.ops.ssm_offset.selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx
    )
    return (y, final) if return_final_state else y


def selective_scan_step(
    state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    state_offset=None, y_offset=None,
):
    """One decode step: state (batch, D, N), u/delta/z (batch, D), B/C (batch, N) or (batch, G, N).

    Returns (y (batch, D), new_state).
    """
    if u.dim() != 2:
        raise ValueError(f"u: got shape {tuple(u.shape)}, expected (batch, D) for one step")
    _check(u, delta, A, B, C, D, z, delta_bias, None, state_offset, y_offset, time_axis=False)
    check_shape("state", state, (u.shape[0], u.shape[1], A.shape[-1]))
    return torch.ops.ssm_offset.selective_scan_step(
        state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_offset, y_offset
    )
