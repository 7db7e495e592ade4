"""Mamba-1 selective scan, sequential reference: the readable oracle every other face is checked against.

    Δ_t = softplus(delta_t + delta_bias)            Ā_t = exp(Δ_t A)
    h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t u_t               h_0 = initial_state (or 0)
    y_t = C_t · (h_t + h') + D ⊙ u_t + y'           h' = state_offset, y' = y_offset
    out_t = y_t ⊙ silu(z_t)

The offset h' enters the readout only; the recurrence keeps using h_t (State-offset Tuning, Kang et al. 2025).
With `seq_idx` (batch, L), a non-decreasing document index per position (mamba_ssm's convention), the state is
reset at each document's first token — to the initial state, which every document starts from.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._common import compute_dtype, document_starts, per_row


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) → (batch, dim, N, L); channel d reads group d // (dim / G)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(BC.shape[0], dim, *BC.shape[1:])
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def discretize(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., :, None] if delta.dim() == 3 else delta + delta_bias
    return F.softplus(delta) if softplus else delta


def readout(y: torch.Tensor, u: torch.Tensor, D, z, y_offset, dim_axis: int = 1) -> torch.Tensor:
    """y + D⊙u + y', then the z gate; shared by every Mamba-1 face so they cannot drift apart."""
    shape = [1] * y.dim()
    shape[dim_axis] = -1
    if D is not None:
        y = y + u * D.to(y.dtype).view(shape)
    if y_offset is not None:
        yo = y_offset.to(y.dtype)
        y = y + (yo.view(shape) if yo.dim() == 1 else yo.view(yo.shape[0], *shape[1:]))
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_naive(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, state_offset=None, y_offset=None, seq_idx=None, states_every: Optional[int] = None,
) -> Tuple[torch.Tensor, ...]:
    """Returns (y, final_state); y in u's dtype, the state in fp32 (fp64 for fp64 inputs). With `states_every` = E
    also the state at the start of every E-step chunk, (batch, D, ceil(L / E), N): chunk k's is h after step kE - 1
    (the initial state, or zero, for k = 0), as the forward op returns them for its backward.

    Channels are viewed as (groups, channels per group) so that B and C broadcast instead of being expanded to
    (batch, D, N, L). The time loop runs over time-major tensors (L, batch, G, D/G, N): each step reads and
    writes contiguous (batch, D, N) slices, unbound once, so that autograd through the loop stays linear in L
    (slicing a large tensor at every step would make each step's backward allocate a gradient of the whole
    tensor) and no step gathers with a stride of L.
    """
    ct = compute_dtype(u)
    batch, dim, length = u.shape
    nstate = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    per = dim // groups
    grouped = lambda t: t.view(batch, groups, per, *t.shape[2:])  # noqa: E731  (batch, D, …) → (batch, G, D/G, …)
    # time-major copies, (batch, G, D/G, L) → (L, batch, G, D/G), and B, C (batch, [G,] N, L) → (L, batch, G, N):
    # contiguous, since elementwise products take their inputs' layout
    tmajor = lambda t: t.permute(3, 0, 1, 2).contiguous()  # noqa: E731
    bc = lambda t: tmajor(t.to(ct)[:, None] if t.dim() == 3 else t.to(ct))  # noqa: E731
    uc = grouped(u.to(ct))
    dt = grouped(discretize(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus))
    dt_tm = tmajor(dt)
    Ag = A.to(ct).view(groups, per, nstate)
    decay = torch.exp(dt_tm[..., None] * Ag)  # (L, batch, G, D/G, N)
    drive = (dt_tm * tmajor(uc))[..., None] * bc(B)[:, :, :, None]
    h0 = per_row(initial_state, batch, 2)
    start = torch.zeros(batch, dim, nstate, dtype=ct, device=u.device) if h0 is None else h0.to(ct)
    start = grouped(start)
    h = start
    resets = document_starts(seq_idx)
    states = []
    for t, (a_t, x_t) in enumerate(zip(decay.unbind(0), drive.unbind(0))):
        if resets is not None and t > 0:
            h = torch.where(resets[:, t, None, None, None], start, h)
        h = a_t * h + x_t
        states.append(h)
    Cg = bc(C)
    to_bdl = lambda t: t.permute(1, 2, 3, 0).reshape(batch, dim, length)  # noqa: E731  (L, batch, G, D/G) → …
    if states:
        y = to_bdl(torch.einsum("lbgdn,lbgn->lbgd", torch.stack(states), Cg))
    else:
        y = uc.new_zeros(batch, dim, 0)
    off = per_row(state_offset, batch, 2)
    if off is not None:
        # C_t · h' with h' constant in time: one contraction over N
        y = y + to_bdl(torch.einsum("bgdn,lbgn->lbgd", grouped(off.to(ct)), Cg))
    y = readout(y, uc.reshape(batch, dim, length), D, z, y_offset)
    final = h.reshape(batch, dim, nstate).clone()
    if states_every is None:
        return y.to(u.dtype), final
    # chunk k > 0 starts from h after step kE - 1; kE < L for each of the ceil(L / E) chunks
    starts = [start] + states[states_every - 1 : length - 1 : states_every] if length else []
    kept = torch.stack(starts, dim=3) if starts else start.new_zeros(*start.shape[:3], 0, nstate)
    return y.to(u.dtype), final, kept.reshape(batch, dim, -1, nstate)
