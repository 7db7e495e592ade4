"""Next-token cross-entropy straight from the final hidden states: the LM head and the loss run over slices of
rows, so the (tokens, vocabulary) logits never exist whole.

On a Mamba-130M-shaped step (8 × 1024 tokens, vocabulary 50,280) the whole-logits path holds bf16 logits, an
fp32 copy, the shifted copy, the log-softmax and their gradients: ~1.6 GB each, and about a dozen full passes
over them. Here each slice goes matmul → log-softmax (read in the matmul's dtype, written in fp32) → exp into
the gradient's dtype, and the two gradient matmuls consume it at once; the backward only scales the stored
gradients by the incoming one (the loss is a scalar, so its vector-Jacobian product is that scale).

The numbers are the whole-logits path's to within fp32 rounding (summation order): logits are computed in the
same dtype (the autocast dtype when autocast is on, else the weight's), log-softmax in fp32 (fp64 for an fp64
model), and the gradient of the target column, p − 1, is formed in fp32 before it is rounded.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# logits elements per slice: 2^25 is 64 MiB in bf16 plus 128 MiB in fp32 at a time, and still ≥ 600 rows per
# matmul for a 50k vocabulary (large enough to keep the GPU's matrix units busy)
LOGITS_PER_SLICE = 1 << 25


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """(batch, L) labels → (batch, L) targets of each position: position t predicts labels[t + 1]; the last
    position predicts nothing (IGNORE_INDEX). Lets the hidden states be used unshifted, without a copy."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, rows, want_hidden, want_weight):
        h, w = hidden.to(dtype), weight.to(dtype)
        loss = hidden.new_zeros((), dtype=_wide(dtype))
        grad_h = torch.empty_like(hidden) if want_hidden else None
        grad_w = torch.zeros(weight.shape, dtype=_wide(weight.dtype), device=weight.device) if want_weight else None
        for start in range(0, h.shape[0], rows):
            hs, ts = h[start:start + rows], targets[start:start + rows]
            valid = ts != IGNORE_INDEX
            index = ts.clamp(min=0)[:, None]
            logp = torch.log_softmax(hs @ w.t(), -1, dtype=_wide(dtype))
            picked = logp.gather(1, index)
            loss -= picked[:, 0].masked_fill(~valid, 0.0).sum()
            if not (want_hidden or want_weight):
                continue
            # d loss / d logits = softmax − one-hot (rows without a target: zero, applied to the small factors)
            g = torch.exp(logp, out=torch.empty(logp.shape, dtype=dtype, device=logp.device))
            g.scatter_(1, index, (picked.exp() - 1.0).to(dtype))
            keep = valid[:, None].to(dtype)
            if want_hidden:
                grad_h[start:start + rows] = (g @ w) * keep
            if want_weight:
                grad_w += g.t() @ (hs * keep)
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype), None, None, None, None, None)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
    logits_per_slice: Optional[int] = None,
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) without the whole logits. hidden (T, H), weight (V, H),
    targets (T,) class indices, IGNORE_INDEX where no loss is taken; reduction "sum" or "mean" (over the
    targets taken: nan when there are none, as F.cross_entropy gives)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: got {reduction!r}, expected 'sum' or 'mean'")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: expected (T, H) and (V, H)")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets: got shape {tuple(targets.shape)}, expected ({hidden.shape[0]},)")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    rows = max(1, (logits_per_slice or LOGITS_PER_SLICE) // weight.shape[0])
    grad = torch.is_grad_enabled()
    with torch.autocast(device, enabled=False):  # the dtypes are chosen above, as autocast would for the head
        total = _LinearCrossEntropy.apply(hidden, weight, targets, dtype, rows,
                                          grad and hidden.requires_grad, grad and weight.requires_grad)
    if reduction == "sum":
        return total
    return total / (targets != IGNORE_INDEX).sum()


__all__ = ["IGNORE_INDEX", "linear_cross_entropy", "shifted_targets"]
