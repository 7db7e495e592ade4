"""The Mamba-2 (SSD) scan ops, defined once with torch.library (see selective_scan/op.py for the pattern).

dt_limit travels as two floats (dt_min, dt_max) because op schemas have no tuple-of-float defaults.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._common import compute_dtype, define_autograd, define_op, fake_grads, recompute_grads, select_grads
from . import kernel as _kernel
from .chunk import ssd_chunked
from .step import ssd_step_reference

_GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state", "state_offset", "y_offset")


def _reference(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max,
               chunk_size, seq_idx=None):
    y, final = ssd_chunked(
        x, dt, A, B, C, D, z, dt_bias, dt_softplus, (dt_min, dt_max), initial_state, state_offset, y_offset, chunk_size,
        seq_idx,
    )
    return y.contiguous(), final.contiguous()  # contiguous, as the fake says (see _common.fake_grads)


def reference_op(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max,
                 chunk_size, seq_idx=None):
    """ssd_fwd's reference implementation: y, the final state, and no stages (kernel.STAGES) for the backward."""
    return (*_reference(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min,
                        dt_max, chunk_size, seq_idx),
            *_kernel.empty_stages(x, B, chunk_size, fast=False))


def ssd_bwd_reference(
    dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max,
    chunk_size, seq_idx=None,
):
    """The backward as the vector-Jacobian product of the chunked reference: the op's default implementation,
    and the fallback of the CUDA registration where its kernels cannot serve (see ssd/kernel.py)."""
    tensors = dict(zip(_GRAD_NAMES, (x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset)))
    return recompute_grads(
        _reference, (dy, dfinal_state), tensors,
        dt_softplus=dt_softplus, dt_min=dt_min, dt_max=dt_max, chunk_size=chunk_size, seq_idx=seq_idx,
    )


@define_op("ssd_fwd")
def ssd_fwd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    dt_bias: Optional[Tensor], initial_state: Optional[Tensor], state_offset: Optional[Tensor],
    y_offset: Optional[Tensor], dt_softplus: bool, dt_min: float, dt_max: float, chunk_size: int,
    seq_idx: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """y, the final state, and what the CUDA implementation keeps for its backward (kernel.STAGES: the stages it
    would otherwise run again; empty where the reference serves the call)."""
    return reference_op(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min,
                        dt_max, chunk_size, seq_idx)


@torch.library.register_fake(ssd_fwd)
def _(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max, chunk_size,
      seq_idx=None):
    b, _, h, p = x.shape
    return (x.new_empty(x.shape), x.new_empty(b, h, p, B.shape[-1], dtype=compute_dtype(x)),
            *_kernel.empty_stages(x, B, chunk_size, fast=_kernel.takes_fast_path(x, chunk_size)))


@define_op("ssd_bwd")
def ssd_bwd(
    dy: Tensor, dfinal_state: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
    state_offset: Optional[Tensor], y_offset: Optional[Tensor], dt_softplus: bool, dt_min: float, dt_max: float,
    chunk_size: int, seq_idx: Optional[Tensor] = None, dA_cumsum: Optional[Tensor] = None,
    dt_chunked: Optional[Tensor] = None, cb: Optional[Tensor] = None, states: Optional[Tensor] = None,
) -> List[Tensor]:
    """The gradient of every input of ssd_fwd (empty for absent ones). dA_cumsum .. states: what ssd_fwd returned
    beside y and the final state, which the CUDA implementation reuses and the reference ignores."""
    return ssd_bwd_reference(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset,
                             dt_softplus, dt_min, dt_max, chunk_size, seq_idx)


@torch.library.register_fake(ssd_bwd)
def _(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min,
      dt_max, chunk_size, seq_idx=None, dA_cumsum=None, dt_chunked=None, cb=None, states=None):
    return fake_grads((x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset))


def _setup_context(ctx, inputs, output):
    tensors = inputs[:11]
    ctx.static = inputs[11:]
    ctx.present = [t is not None for t in tensors]
    stages = output[2:]
    ctx.mark_non_differentiable(*stages)
    ctx.save_for_backward(*tensors, *stages)


def _backward(ctx, dy, dfinal_state, *_dstages):
    saved = ctx.saved_tensors
    grads = ssd_bwd(dy.contiguous(), dfinal_state, *saved[:11], *ctx.static, *saved[11:])
    g = select_grads(list(ctx.needs_input_grad[:11]), grads, ctx.present)
    return (*g, None, None, None, None, None)


define_autograd(ssd_fwd, _setup_context, _backward)


@define_op("ssd_step")
def ssd_step_op(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], dt_bias: Optional[Tensor], state_offset: Optional[Tensor], y_offset: Optional[Tensor],
    dt_softplus: bool, dt_min: float, dt_max: float,
) -> Tuple[Tensor, Tensor]:
    return ssd_step_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, (dt_min, dt_max), state_offset, y_offset)


@torch.library.register_fake(ssd_step_op)
def _(state, x, dt, A, B, C, D, z, dt_bias, state_offset, y_offset, dt_softplus, dt_min, dt_max):
    return torch.empty_like(x), torch.empty_like(state)
