"""Mamba-2 (SSD) on CUDA: mamba_ssm's Triton SSD stages (an optional dependency, called, not copied) plus our
own chunk-scan output kernel (scan_kernel.py), registered as the CUDA implementation of `ssm_offset::ssd_fwd/_bwd`.

The forward runs mamba_ssm's first four stages as its `_mamba_chunk_scan_combined_fwd` does — the within-chunk
cumsum of Δ·A (with dt_bias / softplus / dt_limit), each chunk's own state, the states passed across chunks
(from the initial state, giving the final state) and the per-chunk C·Bᵀ — and then our kernel in place of its
`_chunk_scan_fwd`. Ours adds what mamba_ssm's lacks, in the same pass over y, before the z gate:

    out_t = (y_t + C_t h' + y') ⊙ silu(z_t)          y_t = C_t h_t + D x_t   (mamba_ssm's ungated output)

C_t h' is one more (Q×N)·(N×P) tile product on the C tile already loaded for C_t·S, so an offset costs no
extra pass over y. The forward returns its four stages beside y (STAGES; the op saves them for its backward),
and the backward calls mamba_ssm's backward stages from them (`_backward_stages`) on the gradient before the gate,
dy_pre = dout ⊙ silu(z), where mamba_ssm's own backward runs those four stages again: four launches fewer, which
is what a host-bound call waits for. They hold less than mamba_ssm keeps (its output, the size of x): the
states entering each chunk in x's dtype (x's size times N / chunk), C·Bᵀ per chunk (G·chunk fp32 a token) and
the discretized Δ with its cumsum (2·H fp32 a token). Then

    dh'[h] = Σ_t dy_pre_t,hᵀ C_t          dC_t += Σ_{h in group} dy_pre_t,h h'[h]          dy' = Σ_t dy_pre_t

are two plain matrix products (cuBLAS) over (batch·L, H·P) views and a sum. With z, dz needs the pre-gate
sum s = y + C h' + y', which the op does not keep: our kernel runs again in its backward mode on the kept
stages, writing dy_pre and dz instead of out. Mamba-2 models gate in their RMSNorm, so their scans have no z.

mamba_ssm's package `__init__` imports its compiled CUDA extension, which a pure-Python install (an sdist
with MAMBA_SKIP_CUDA_BUILD=TRUE, or the unpacked source on PYTHONPATH) does not have; the Triton SSD needs
none of it, so `_mamba_ssd()` falls back to importing the submodules under a bare package object.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from typing import Optional

import torch

_ssd = None
_error: Optional[str] = None


def _mamba_ssd():
    """mamba_ssm.ops.triton.ssd_combined, or None (the reason kept in `_error`)."""
    global _ssd, _error
    if _ssd is not None or _error is not None:
        return _ssd
    name = "mamba_ssm.ops.triton.ssd_combined"
    try:
        _ssd = importlib.import_module(name)
        return _ssd
    except Exception as exc:  # noqa: BLE001 — fall through to the import without the CUDA extension
        first = exc
    try:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("mamba_ssm is not installed")
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["mamba_ssm"] = pkg
        _ssd = importlib.import_module(name)
        return _ssd
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop("mamba_ssm", None)
        _error = f"mamba_ssm's Triton SSD unavailable ({type(first).__name__}: {first}; then {type(exc).__name__}: {exc})"
        return None


def available() -> bool:
    return _mamba_ssd() is not None


def status() -> str:
    if _ssd is not None:
        return "Mamba-2 SSD: mamba_ssm Triton SSD stages + ssm_offset chunk-scan kernel for CUDA tensors"
    if _error is not None:
        return f"Mamba-2 SSD: PyTorch reference ({_error})"
    return ("Mamba-2 SSD: mamba_ssm Triton SSD stages + ssm_offset chunk-scan kernel when mamba_ssm is importable "
            "(checked on first use)")


# ------------------------------------------------------------------------------------- op implementations

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


_warned = False


def _usable(x, chunk_size) -> bool:
    global _warned
    if x.dtype not in _DTYPES or x.shape[1] == 0 or x.numel() == 0:
        return False
    if _mamba_ssd() is None:
        if not _warned:
            _warned = True
            warnings.warn(f"{_error}; the PyTorch reference serves Mamba-2 scans on CUDA tensors (slow). "
                          "Install mamba-ssm (its Triton SSD needs no CUDA build) for the fast path.",
                          RuntimeWarning, stacklevel=4)
        return False
    return True


def _chunk(chunk_size: int) -> int:
    # any chunk gives the same function; mamba_ssm's kernels are tuned for powers of two up to 256
    return chunk_size if 16 <= chunk_size <= 256 and chunk_size & (chunk_size - 1) == 0 else 64


def _full_state(t, batch):
    """A shared (H, P, N) state → (batch, H, P, N), as mamba_ssm takes it."""
    if t is None:
        return None
    return (t.unsqueeze(0).expand(batch, *t.shape) if t.dim() == 3 else t).contiguous()


def _documents(seq_idx):
    """mamba_ssm's seq_idx: int32, the first document numbered 0 (its initial state belongs to document 0)."""
    return None if seq_idx is None else (seq_idx - seq_idx[:, :1]).to(torch.int32).contiguous()


def _restarts(seq_idx, dt, A, dt_bias, C, initial_state, dt_softplus, dt_min, dt_max):
    """What mamba_ssm's seq_idx lacks: it restarts every later document from zero, where ours restart from the
    initial state. Its contribution, y_t += exp(Σ_{s≤r≤t} Δ_r a) C_t·h_0 over a document starting at s > 0 (and
    to the final state), is the reference's own formula (chunk._restarted_initial_state), in fp32 / fp64. None, None
    where there is nothing to restart (no documents or no initial state)."""
    if seq_idx is None or initial_state is None:
        return None, None
    from .chunk import _restarted_initial_state
    from .naive import discretize_dt, heads_to_groups

    batch, nheads = dt.shape[0], dt.shape[-1]
    a = discretize_dt(dt.float(), None if dt_bias is None else dt_bias.float(), dt_softplus, (dt_min, dt_max))
    h0 = initial_state.float()
    zero = torch.zeros(batch, *h0.shape[-3:], dtype=torch.float32, device=dt.device)
    return _restarted_initial_state(seq_idx, a * A.float(), h0, heads_to_groups(C.float(), nheads), zero)


STAGES = ("dA_cumsum", "dt_chunked", "cb", "states")


def takes_fast_path(x, chunk_size) -> bool:
    """Whether a CUDA call of the op takes the path below (and so returns its stages): kernels registered for
    CUDA tensors, and `_usable`. The op's fake asks the same question of its fake tensors."""
    from .. import kernels

    return x.device.type == "cuda" and kernels._registered and _usable(x, chunk_size)


def empty_stages(x, B, chunk_size, fast):
    """The stages ssd_fwd returns for its backward, as empty tensors: shaped as `_stages` makes them where the path
    below serves the call (`fast`), else of no elements (the reference keeps none). In order (STAGES):
    dA_cumsum and dt_chunked (batch, H, chunks, Q) fp32, cb (batch, chunks, G, Q, Q) fp32, states (batch, chunks, H,
    P, N) in x's dtype."""
    f = torch.float32
    if not fast:
        return (x.new_empty(0, dtype=f), x.new_empty(0, dtype=f), x.new_empty(0, dtype=f), x.new_empty(0))
    batch, length, nheads, headdim = x.shape
    groups, nstate = B.shape[-2:]
    q = _chunk(chunk_size)
    nchunks = -(-length // q)
    return (x.new_empty(batch, nheads, nchunks, q, dtype=f), x.new_empty(batch, nheads, nchunks, q, dtype=f),
            x.new_empty(batch, nchunks, groups, q, q, dtype=f), x.new_empty(batch, nchunks, nheads, headdim, nstate))


def _stages(m, x, dt, A, B, C, dt_bias, initial_state, dt_softplus, dt_min, dt_max, q, docs):
    """mamba_ssm's four stages before the chunk scan: the within-chunk cumsum of Δ·A and the discretized Δ (with
    dt_bias / softplus / dt_limit), each chunk's own state, the states passed across chunks from the initial state
    (the one entering each chunk, in x's dtype, and the fp32 final state) and the per-chunk C·Bᵀ (zero across
    documents). x, B, C contiguous in x's dtype. Returns (dA_cumsum, dt_chunked, cb, states), final."""
    batch, length, nheads, headdim = x.shape
    nstate = B.shape[-1]
    init = _full_state(initial_state, batch)
    dA_cumsum, dt_c = m._chunk_cumsum_fwd(dt.contiguous(), A.float().contiguous(), q,
                                          dt_bias=None if dt_bias is None else dt_bias.contiguous(),
                                          dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max))
    own = m._chunk_state_fwd(B, x, dt_c, dA_cumsum, seq_idx=docs, states_in_fp32=True)
    entering, final = m._state_passing_fwd(own.flatten(-2), dA_cumsum[:, :, :, -1],
                                           initial_states=None if init is None else init.flatten(-2),
                                           seq_idx=docs, chunk_size=q, out_dtype=x.dtype)
    cb = m._bmm_chunk_fwd(C, B, q, seq_idx=docs, output_dtype=torch.float32)
    return (dA_cumsum, dt_c, cb, entering.unflatten(-1, (headdim, nstate))), final.unflatten(-1, (headdim, nstate))


def _scan(stages, x, C, D, z, state_offset, y_offset, docs, restart, dout=None):
    """Our chunk-scan kernel on the stages: the output (batch, L, H, P), offsets and gate applied, with `restart`
    (`_restarts`) added before the gate; with dout (needs z), (dy_pre, dz) in its place."""
    from .scan_kernel import chunk_scan

    dA_cumsum, dt_c, cb, states = stages
    return chunk_scan(cb, x, dt_c, dA_cumsum, C, states, D=D, z=None if z is None else z.to(x.dtype),
                      state_offset=state_offset, y_offset=y_offset, extra=restart, seq_idx=docs,
                      dout=None if dout is None else dout.to(x.dtype))


def ssd_fwd_cuda(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max,
                 chunk_size, seq_idx=None):
    """The output (batch, L, H, P) in x's dtype, offsets and gate applied, the fp32 final state, and the stages the
    backward reuses (STAGES) instead of running them again. With document boundaries each document restarts from
    the initial state (mamba_ssm's seq_idx plus `_restarts`, added in our kernel before the gate)."""
    from .op import reference_op

    if not _usable(x, chunk_size):
        return reference_op(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus,
                            dt_min, dt_max, chunk_size, seq_idx)
    m = _mamba_ssd()
    x, B, C = x.contiguous(), B.contiguous(), C.to(x.dtype).contiguous()
    docs = _documents(seq_idx)
    stages, final = _stages(m, x, dt, A, B, C, dt_bias, initial_state, dt_softplus, dt_min, dt_max,
                            _chunk(chunk_size), docs)
    restart, final_h0 = _restarts(seq_idx, dt, A, dt_bias, C, initial_state, dt_softplus, dt_min, dt_max)
    out = _scan(stages, x, C, D, z, state_offset, y_offset, docs, restart)
    if final_h0 is not None:
        final = final + final_h0
    return (out, final.float(), *stages)


def ssd_bwd_cuda(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset,
                 dt_softplus, dt_min, dt_max, chunk_size, seq_idx=None, dA_cumsum=None, dt_chunked=None, cb=None,
                 states=None):
    """The gradients of every input (empty for absent ones), from the stages the forward returned (run again where
    they are missing or empty). mamba_ssm's backward stages on dy_pre, the gradient before the gate, called in the
    order its own backward calls them (`_backward_stages`), then the offsets' terms."""
    from .op import ssd_bwd_reference

    if not _usable(x, chunk_size):
        return ssd_bwd_reference(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset,
                                 y_offset, dt_softplus, dt_min, dt_max, chunk_size, seq_idx)
    m = _mamba_ssd()
    batch, length, nheads, headdim = x.shape
    groups, nstate = B.shape[-2:]
    xc, Bc, Cc = x.contiguous(), B.contiguous(), C.to(x.dtype).contiguous()
    docs = _documents(seq_idx)
    q = _chunk(chunk_size)
    stages = (dA_cumsum, dt_chunked, cb, states)
    if any(t is None or t.numel() == 0 for t in stages):
        stages, _ = _stages(m, xc, dt, A, Bc, Cc, dt_bias, initial_state, dt_softplus, dt_min, dt_max, q, docs)
    dy = dy.to(x.dtype).contiguous()
    dz = None
    dy32 = dy  # the gradient before the gate at the best precision we have, for the sums below
    if z is not None:
        restart, _ = _restarts(seq_idx, dt, A, dt_bias, Cc, initial_state, dt_softplus, dt_min, dt_max)
        dy32, dz = _scan(stages, xc, Cc, D, z, state_offset, y_offset, docs, restart, dout=dy)
        dy = dy32.to(x.dtype)
    dC_extra = None
    doff = dyoff = None
    if state_offset is not None:
        # dC_t += Σ_{h in group} dy_pre_t,h h'[h] and dh'[h] = Σ_t dy_pre_t,hᵀ C_t: per group, (batch, L, hg·P)
        # against h' as (hg·P, N); the (batch·L, H·P) views need no copies
        hgp = nheads // groups * headdim
        dyg = dy32.view(batch, length, groups, hgp)
        off = state_offset.to(dy32.dtype)
        offg = off.reshape(*off.shape[:-3], groups, hgp, nstate)
        shared = off.dim() == 3
        dC_extra = torch.einsum("blgk,gkn->blgn" if shared else "blgk,bgkn->blgn", dyg, offg).float()
        doff = torch.einsum("blgk,blgn->gkn" if shared else "blgk,blgn->bgkn", dyg, Cc.to(dyg.dtype)).float()
        doff = doff.reshape(state_offset.shape)
    dx, ddt, dA, dB, dC, dD, ddt_bias, dinit = _backward_stages(
        m, stages, dy, xc, dt, A, Bc, Cc, D, dt_bias, initial_state is not None, dfinal_state, docs, dC_extra,
        dt_softplus, dt_min, dt_max)
    restart_grads = {}
    if seq_idx is not None and initial_state is not None:
        # the restarts' gradients: a vjp of their (small, elementwise + one contraction) torch formula
        primals = {"dt": dt, "A": A, "C": C, "initial_state": initial_state}
        if dt_bias is not None:
            primals["dt_bias"] = dt_bias

        def restarts(dt, A, C, initial_state, dt_bias=None):
            return _restarts(seq_idx, dt, A, dt_bias, C, initial_state, dt_softplus, dt_min, dt_max)

        outs, vjp = torch.func.vjp(lambda *p: restarts(**dict(zip(primals, p))), *primals.values())
        cot = (dy32.float(), torch.zeros_like(outs[1]) if dfinal_state is None else dfinal_state.float())
        restart_grads = dict(zip(primals, vjp(cot)))
    if y_offset is not None:
        dyoff = dy32.sum(dim=(0, 1) if y_offset.dim() == 2 else 1, dtype=torch.float32)
    if dinit is not None and initial_state.dim() == 3:
        dinit = dinit.sum(0, dtype=torch.float32)
    grads = (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit, doff, dyoff)
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset)
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state", "state_offset", "y_offset")
    out = []
    for g, t, name in zip(grads, inputs, names):
        if t is None or g is None:
            out.append(torch.empty(0, device=x.device) if t is None else t.new_zeros(t.shape))
            continue
        g = g.reshape(t.shape)
        if name in restart_grads:
            g = g.float() + restart_grads[name].reshape(t.shape)
        out.append(g.to(t.dtype).contiguous())  # contiguous, as the op's fake says (see _common.fake_grads)
    return out


def _backward_stages(m, stages, dy, x, dt, A, B, C, D, dt_bias, has_initial, dfinal_state, docs, dC_extra,
                     dt_softplus, dt_min, dt_max):
    """mamba_ssm's SSD backward stages on dy (the gradient before the gate, in x's dtype), from the forward's stages
    rather than running them again. The order and the sums between stages are those of mamba_ssm's
    `_mamba_chunk_scan_combined_bwd` without z. dC_extra (fp32, like C) is added to dC before its one rounding to C's
    dtype. Returns dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial_state."""
    dA_cumsum, dt_c, cb, states = stages
    headdim = x.shape[-1]
    groups, nstate = B.shape[-2:]
    q = dA_cumsum.shape[-1]
    # the gradient reaching the state entering each chunk, then passed back across chunks (index 0: the initial
    # state's); ddA of each chunk's last cumsum from the states it scaled
    dstates = m._chunk_scan_bwd_dstates(C, dA_cumsum, dy, seq_idx=docs, dtype=torch.float32)
    dstates, ddA_chunk, dinit, states = m._state_passing_bwd(
        states.flatten(-2), dA_cumsum[:, :, :, -1], dstates.flatten(-2),
        dfinal_states=None if dfinal_state is None else dfinal_state.float().flatten(-2).contiguous(),
        seq_idx=docs, has_initial_states=has_initial, dstates_dtype=x.dtype, states_dtype=x.dtype, chunk_size=q)
    states, dstates = states.unflatten(-1, (headdim, nstate)), dstates.unflatten(-1, (headdim, nstate))
    if dinit is not None:
        dinit = dinit.unflatten(-1, (headdim, nstate))
    dx, ddt, dD = m._chunk_scan_chunk_state_bwd_dx(x, dt_c, dA_cumsum, B, cb, dy, dstates,
                                                   D=None if D is None else D.contiguous(), seq_idx=docs)
    dB, ddA_next = m._chunk_state_bwd_db(x, dt_c, dA_cumsum, dstates, seq_idx=docs, B=B, ngroups=groups)
    dC, ddA_prev = m._chunk_scan_bwd_dC(states, dA_cumsum, dy, seq_idx=docs, C=C, ngroups=groups)
    if dC_extra is not None:
        dC = dC + dC_extra
    dcb = m._chunk_scan_bwd_dcb(x, dt_c, dA_cumsum, dy, seq_idx=docs, ngroups=groups).to(cb.dtype)
    dB = m._bmm_chunk_bwd(C, dcb, residual=dB)
    dC = m._bmm_chunk_bwd(B, dcb.transpose(-1, -2), residual=dC)
    # ddA (the within-chunk cumsum's gradient): from the states entering each chunk, reversed into a suffix sum,
    # plus the intra-chunk terms and those through each chunk's own state
    ddA_prev[..., -1] += ddA_chunk
    ddA = ddA_prev.flip([-1]).cumsum(dim=-1).flip([-1])
    ddA += m._chunk_scan_bwd_ddAcs_stable(x, dt_c, dA_cumsum, dy, cb) + ddA_next
    ddt, dA, ddt_bias = m._chunk_cumsum_bwd(ddA, ddt, dt.contiguous(), A.float().contiguous(),
                                            dt_bias=None if dt_bias is None else dt_bias.contiguous(),
                                            dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max))
    return dx, ddt, dA, dB, dC, dD, ddt_bias, dinit


def limit_autotuning(max_configs: int = 1) -> int:
    """Keep at most `max_configs` of each SSD kernel's autotuning configs, ours and mamba_ssm's (when it is
    importable): the first ones, plus the smallest, which always fits. Autotuning compiles every config at every
    new specialization (dtype, flags, lengths divisible by 16 or not), minutes per shape on a busy machine:
    tests use 1, a benchmark a few. Returns the number of kernels limited (0 without triton)."""
    if importlib.util.find_spec("triton") is None:
        return 0
    from triton.runtime.autotuner import Autotuner

    from . import scan_kernel

    _mamba_ssd()  # imports mamba_ssm's SSD modules, whose kernels are limited below

    def cost(cfg):
        size = 1
        for k, v in cfg.kwargs.items():
            if k.startswith("BLOCK_"):
                size *= v
        return size * (cfg.num_stages or 1)

    modules = [mod for name, mod in list(sys.modules.items())
               if name.startswith("mamba_ssm.ops.triton.ssd_") and mod is not None] + [scan_kernel]
    count = 0
    for mod in modules:
        for obj in vars(mod).values():
            if isinstance(obj, Autotuner) and len(obj.configs) > max_configs:
                smallest = min(obj.configs, key=cost)
                keep = [c for c in obj.configs[: max_configs - 1] if c is not smallest] + [smallest]
                obj.configs = keep
                count += 1
    return count
