"""The Mamba-1 scan ops, defined once with torch.library: schema, reference implementation (used on
any device that has no kernel registered), fake implementation for torch.compile, and autograd.

The CUDA kernels attach to these same ops (`register_kernel("cuda")`); nothing is defined twice.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._common import (compute_dtype, define_autograd, define_op, empty_scan_like, fake_grads, recompute_grads,
                       scan_like, select_grads)
from .naive import selective_scan_naive
from .step import selective_scan_step_reference

_GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "state_offset", "y_offset")
_LAID_OUT = (0, 1, 6)  # du, ddelta, dz: each in its input's layout (_common.empty_scan_like)


# The forward also returns the state at the start of every STATES_EVERY-step chunk, (batch, D, ceil(L / E), N) fp32,
# and the backward takes them back: a kernel that walks the sequence in such chunks then starts each from its saved
# state instead of replaying the recurrence up to it (a forward's worth of work). Every implementation returns the
# same values (chunk k: h after step kE - 1; the initial state or zero for k = 0), so which one ran the forward does
# not matter to which one runs the backward. cuda/selective_scan/selective_scan.h's kStatesEvery is the same number.
STATES_EVERY = 256


def chunk_count(length: int) -> int:
    return -(-length // STATES_EVERY)


def laid_out_grads(grads, inputs):
    """The op's gradient list with du, ddelta and dz in their inputs' layouts, the others contiguous."""
    return [scan_like(g, inputs[i]) if i in _LAID_OUT and inputs[i] is not None else g for i, g in enumerate(grads)]


def selective_scan_fwd_reference(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx=None,
):
    """The forward of the reference: the op's default implementation, and the fallback of the CUDA registration."""
    y, final, states = selective_scan_naive(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx,
        states_every=STATES_EVERY,
    )
    return scan_like(y, delta), final.contiguous(), states.contiguous()  # laid out as the fake says


def selective_scan_bwd_reference(
    dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset,
    seq_idx=None, chunk_states=None,
):
    """The backward as the vector-Jacobian product of the reference: the op's default implementation,
    and the fallback of the CUDA registration when the kernels cannot be built (it recomputes every state, so
    it has no use for chunk_states)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset)
    grads = recompute_grads(selective_scan_naive, (dy, dfinal_state), dict(zip(_GRAD_NAMES, inputs)),
                            delta_softplus=delta_softplus, seq_idx=seq_idx)
    return laid_out_grads(grads, inputs)


@define_op("selective_scan_fwd")
def selective_scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, initial_state: Optional[Tensor],
    state_offset: Optional[Tensor], y_offset: Optional[Tensor], seq_idx: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    return selective_scan_fwd_reference(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx
    )


@torch.library.register_fake(selective_scan_fwd)
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx=None):
    y = empty_scan_like(delta, u.dtype)
    batch, dim, length = u.shape
    f = compute_dtype(u)
    return (y, u.new_empty(batch, dim, A.shape[1], dtype=f),
            u.new_empty(batch, dim, chunk_count(length), A.shape[1], dtype=f))


@define_op("selective_scan_bwd")
def selective_scan_bwd(
    dy: Tensor, dfinal_state: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], state_offset: Optional[Tensor], y_offset: Optional[Tensor],
    seq_idx: Optional[Tensor] = None, chunk_states: Optional[Tensor] = None,
) -> List[Tensor]:
    return selective_scan_bwd_reference(
        dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset,
        seq_idx, chunk_states,
    )


@torch.library.register_fake(selective_scan_bwd)
def _(dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset,
      seq_idx=None, chunk_states=None):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset)
    return laid_out_grads(fake_grads(inputs), inputs)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset, seq_idx = inputs
    ctx.delta_softplus = delta_softplus
    ctx.seq_idx = seq_idx
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset)
    ctx.present = [t is not None for t in tensors]
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(*tensors, output[2])


def _backward(ctx, dy, dfinal_state, _dchunk_states):
    u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset, chunk_states = ctx.saved_tensors
    grads = selective_scan_bwd(
        dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus,
        initial_state, state_offset, y_offset, ctx.seq_idx, chunk_states,
    )
    needs = list(ctx.needs_input_grad)
    g = select_grads(needs[:8] + needs[9:12], grads, ctx.present)
    return (*g[:8], None, *g[8:], None)


define_autograd(selective_scan_fwd, _setup_context, _backward)


@define_op("selective_scan_step")
def selective_scan_step_op(
    state: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    state_offset: Optional[Tensor], y_offset: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    return selective_scan_step_reference(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_offset, y_offset)


@torch.library.register_fake(selective_scan_step_op)
def _(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_offset, y_offset):
    return torch.empty_like(u), torch.empty_like(state)
