"""Shape checks and dtype rules shared by every scan face (reference, chunked, step, kernels)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


class ScanShapeError(ValueError):
    """A scan input has the wrong shape; the message names the tensor, its shape and what was expected."""


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """State and accumulation run in fp32 (fp64 when the inputs are fp64, for the oracle tests)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_shape(name: str, t: Optional[torch.Tensor], *allowed: Sequence[int]) -> None:
    if t is None:
        return
    if tuple(t.shape) not in [tuple(a) for a in allowed]:
        want = " or ".join(str(tuple(a)) for a in allowed)
        raise ScanShapeError(f"{name}: got shape {tuple(t.shape)}, expected {want}")


def check_seq_idx(seq_idx: Optional[torch.Tensor], batch: int, length: int) -> None:
    if seq_idx is None:
        return
    check_shape("seq_idx", seq_idx, (batch, length))
    if seq_idx.is_floating_point() or seq_idx.dtype == torch.bool:
        raise ScanShapeError(f"seq_idx: got dtype {seq_idx.dtype}, expected an integer document index")
    if length > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
        raise ScanShapeError("seq_idx: must be non-decreasing along each row (one index per packed document)")


def per_row(t: Optional[torch.Tensor], batch: int, shared_ndim: int) -> Optional[torch.Tensor]:
    """Broadcast a shared adapter tensor (no batch dim) to one per batch row; per-row tensors pass through.

    Per-row adapters are what lets one forward serve or evaluate many adapters at once.
    """
    if t is None:
        return None
    if t.dim() == shared_ndim:
        return t.unsqueeze(0).expand(batch, *t.shape)
    return t


def document_starts(seq_idx: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(batch, L) bool: True where a new document begins (position 0 excluded: every row starts fresh)."""
    if seq_idx is None:
        return None
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def recompute_grads(reference, grad_outputs, tensors, **static):
    """Backward of a scan as the vector-Jacobian product of its reference (the CPU backward of every op).

    `tensors` maps argument names to tensors (or None); returns one gradient per entry, in order, with an
    empty tensor for absent inputs, because custom ops cannot return None. torch.func.vjp is used rather
    than torch.autograd.grad because an op's implementation runs below the autograd dispatch key.
    """
    names = [k for k, v in tensors.items() if v is not None and v.is_floating_point()]
    fixed = {k: v for k, v in tensors.items() if k not in names}

    def run(*primals):
        return reference(**dict(zip(names, primals)), **fixed, **static)

    outs, vjp = torch.func.vjp(run, *(tensors[k] for k in names))
    cotangents = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(outs, grad_outputs))
    grads = dict(zip(names, vjp(cotangents)))
    device = next(v.device for v in tensors.values() if v is not None)
    return [grads[k].contiguous() if k in grads else torch.empty(0, device=device) for k in tensors]


def time_major(t: torch.Tensor) -> bool:
    """A (batch, C, L) tensor whose channels are adjacent in memory: a transposed view of a projection's
    (batch, L, C) output, as the Mamba-1 mixer hands delta and z to the scan."""
    return t.dim() == 3 and t.shape[1] > 1 and t.shape[2] > 1 and t.stride(1) == 1


def empty_scan_like(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A new tensor shaped like the (batch, C, L) tensor t, time-major where t is, contiguous otherwise.

    The Mamba-1 scan lays its (batch, C, L) outputs out this way in every implementation (reference, kernels,
    fake): y like delta, and each of du, ddelta, dz like its input. A projection then reads y, and autograd
    hands ddelta and dz back to theirs, without a layout copy; and a compiled graph, which plans its views on
    the fake's strides, gets the strides it planned for."""
    dtype = dtype or t.dtype
    if time_major(t):
        return t.new_empty((t.shape[0], t.shape[2], t.shape[1]), dtype=dtype).transpose(1, 2)
    return t.new_empty(t.shape, dtype=dtype)


def scan_like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x (shaped like t) in the layout empty_scan_like(t) gives: x itself where it has it, else a copy."""
    if x.transpose(1, 2).is_contiguous() if time_major(t) else x.is_contiguous():
        return x
    out = empty_scan_like(t, x.dtype)
    out.copy_(x)
    return out


def fake_grads(tensors):
    """What a scan backward returns, for torch.compile: contiguous gradients, as every implementation of the op
    returns them whatever its inputs' strides (a compiled graph plans its views and reshapes on the fake strides,
    and a real tensor with other strides fails there: "view size is not compatible"). The Mamba-1 scan then lays
    du, ddelta and dz out like their inputs, in every implementation alike (selective_scan.op.laid_out_grads)."""
    device = next(v.device for v in tensors if v is not None)
    return [v.new_empty(v.shape) if v is not None else torch.empty(0, device=device) for v in tensors]


def select_grads(ctx_needs, grads, present):
    """Map the op's dense gradient list back to autograd's None-for-absent convention."""
    return [g if (need and p) else None for g, need, p in zip(grads, ctx_needs, present)]


# ------------------------------------------------------------------------------------------------ op definitions

_LIB = torch.library.Library("ssm_offset", "FRAGMENT")


def define_op(name: str) -> Callable:
    """Decorator: defines the op ssm_offset::<name> with the schema of the decorated function's annotations, which
    becomes its implementation on every device without a kernel of its own (kernels.py registers the CUDA ones with
    torch.library.register_kernel). Returns the op (an OpOverload); give it a fake implementation with
    torch.library.register_fake and, where it is differentiable, a backward with `define_autograd`."""

    def define(fn: Callable):
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=()))
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return getattr(torch.ops.ssm_offset, name).default

    return define


def define_autograd(op, setup_context: Callable, backward: Callable) -> None:
    """The op's autograd, one torch.autograd.Function registered as its Autograd kernel: setup_context(ctx, inputs,
    output) saves what backward(ctx, *grad_outputs) needs, which returns one gradient (or None) per input of the
    schema.

    torch.library.custom_op generates the same with more Python around every call (the schema's defaults filled back
    in, its dispatch keys and keyword arguments packed): with it a Mamba-1 scan's forward+backward cost the host
    0.25 ms, with this 0.19 (benches/bench_scan_host.py, the 2-core CPU, kernels stubbed; bench_ssd_host.py: ours
    over mamba_ssm's call +0.25 -> +0.14 ms). Where few channels make a forward+backward host-bound
    (benches/results/kernels-h100.md at 4x2048x1024) that is wall-clock time. torch.compile traces this kernel as it
    traces custom_op's: the Function is applied to fake tensors and its backward calls the backward op."""
    schema = op._schema
    defaults = tuple(a.default_value for a in schema.arguments)

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        setup_context(ctx, args, out)
        return out

    # named after the op, so that a graph's node reads <op>Backward (autograd names it when the class is made)
    name = schema.name.split("::")[-1]
    Function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def autograd_kernel(*args):
        args = args + defaults[len(args):]  # the dispatcher leaves out trailing arguments equal to their defaults
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return Function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    _LIB.impl(name, autograd_kernel, "Autograd")
