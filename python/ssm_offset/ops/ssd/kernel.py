"""Mamba-2 (SSD) on CUDA: mamba_ssm's Triton SSD (an optional dependency, called, not copied) plus our own
Triton kernel for what it lacks, registered as the CUDA implementation of `ssm_offset::ssd_fwd/ssd_bwd`.

mamba_ssm's `_mamba_chunk_scan_combined_fwd/_bwd` already take the initial state (and its gradient), the
final-state gradient, dt_bias / softplus / dt_limit and D. What they lack is the State-offset term and the
y offset, both applied before the z gate:

    out_t = (y_t + C_t h' + y') ⊙ silu(z_t)          y_t = C_t h_t + D x_t   (mamba_ssm's ungated output)

so the scan runs without z and one epilogue kernel (`_readout_kernel`) adds C_t h' (a (Q×N)·(N×P) tile
product per head on the tensor cores), y' and the gate, in place over y: one read and one write of y, no
separate pass for each term. Nothing runs when there is no offset, no y' and no z. The backward needs the
gradient before the gate, dy_pre = dout ⊙ silu(z); then

    dh'[h] = Σ_t dy_pre_t,hᵀ C_t          dC_t += Σ_{h in group} dy_pre_t,h h'[h]          dy' = Σ_t dy_pre_t

are two plain matrix products (cuBLAS) over (batch·L, H·P) views and a sum. With z, dz needs the pre-gate
sum s = y + C h' + y', which the op does not keep: the backward then re-runs the forward (mamba_ssm's own
backward re-runs most of it too). Mamba-2 models gate in their RMSNorm, so their scans have no z.

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
        return "Mamba-2 SSD: mamba_ssm Triton SSD + ssm_offset offset/readout kernel for CUDA tensors"
    if _error is not None:
        return f"Mamba-2 SSD: PyTorch reference ({_error})"
    return "Mamba-2 SSD: mamba_ssm Triton SSD + ssm_offset offset kernel when mamba_ssm is importable (checked on first use)"


# ------------------------------------------------------------------------------------------ Triton kernel

_readout_kernel = None


def _kernel():
    """Compile-on-import of the Triton epilogue (triton is only imported once a CUDA tensor needs it)."""
    global _readout_kernel
    if _readout_kernel is not None:
        return _readout_kernel
    import triton
    import triton.language as tl

    @triton.jit
    def readout(
        y_ptr, c_ptr, off_ptr, yoff_ptr, z_ptr, dout_ptr, out_ptr, dz_ptr,
        L, H, P, N, heads_per_group,
        s_b, s_l, s_h,  # y, z, dout, out, dz: one contiguous (batch, L, H, P) layout
        s_cb, s_cl, s_cg,
        s_ob, s_oh, s_op,
        s_yob, s_yoh,
        HAS_OFF: tl.constexpr, HAS_YOFF: tl.constexpr, HAS_Z: tl.constexpr, BWD: tl.constexpr,
        IEEE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_l = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        g = h // heads_per_group
        rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, BLOCK_P)
        rmask = rows < L
        pmask = cols < P
        mask = rmask[:, None] & pmask[None, :]
        offs = b.to(tl.int64) * s_b + rows[:, None].to(tl.int64) * s_l + h * s_h + cols[None, :]
        s = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_OFF:
            acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=tl.float32)
            c_base = c_ptr + b.to(tl.int64) * s_cb + g * s_cg
            o_base = off_ptr + b.to(tl.int64) * s_ob + h * s_oh
            for n0 in range(0, N, BLOCK_N):
                ns = n0 + tl.arange(0, BLOCK_N)
                nmask = ns < N
                c = tl.load(c_base + rows[:, None].to(tl.int64) * s_cl + ns[None, :],
                            mask=rmask[:, None] & nmask[None, :], other=0.0)
                o = tl.load(o_base + cols[None, :] * s_op + ns[:, None], mask=nmask[:, None] & pmask[None, :], other=0.0)
                if IEEE:
                    acc += tl.dot(c.to(tl.float32), o.to(tl.float32), input_precision="ieee")
                else:
                    acc += tl.dot(c, o.to(c.dtype))
            s += acc
        if HAS_YOFF:
            s += tl.load(yoff_ptr + b * s_yob + h * s_yoh + cols, mask=pmask, other=0.0).to(tl.float32)[None, :]
        if HAS_Z:
            zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            if BWD:
                do = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(dz_ptr + offs, (do * s * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask)
                tl.store(out_ptr + offs, (do * zz * sig).to(out_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(out_ptr + offs, (s * zz * sig).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + offs, s.to(out_ptr.dtype.element_ty), mask=mask)

    _readout_kernel = readout
    return readout


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def _readout(y, C, state_offset, y_offset, z, dout=None):
    """Forward (dout None): y ← (y + C h' + y') ⊙ silu(z) in place, returned.
    Backward: returns (dy_pre, dz) from dout, with y the ungated scan output."""
    import triton

    batch, length, nheads, headdim = y.shape
    groups, nstate = C.shape[-2:]
    off = None if state_offset is None else state_offset.contiguous()
    yoff = None if y_offset is None else y_offset.contiguous()
    if dout is None:
        out, dz = y, None
    else:
        # dy_pre in fp32: the offset, y-offset and restart gradients are sums of it over batch x L, which
        # bf16-rounded terms would miss by ~sqrt(batch L) ulps (mamba_ssm's backward takes it cast back)
        dout = dout.contiguous()
        out, dz = torch.empty_like(dout, dtype=torch.float32), torch.empty_like(z)
    dummy = y
    block_l = 64
    grid = (triton.cdiv(length, block_l), batch * nheads)
    _kernel()[grid](
        y, C, dummy if off is None else off, dummy if yoff is None else yoff, dummy if z is None else z,
        dummy if dout is None else dout, out, dummy if dz is None else dz,
        length, nheads, headdim, nstate, nheads // groups,
        y.stride(0), y.stride(1), y.stride(2),
        C.stride(0), C.stride(1), C.stride(2),
        0 if off is None or off.dim() == 3 else off.stride(0),
        0 if off is None else off.stride(-3), 0 if off is None else off.stride(-2),
        0 if yoff is None or yoff.dim() == 2 else yoff.stride(0), 0 if yoff is None else yoff.stride(-2),
        HAS_OFF=off is not None, HAS_YOFF=yoff is not None, HAS_Z=z is not None, BWD=dout is not None,
        IEEE=y.dtype == torch.float32, BLOCK_L=block_l, BLOCK_P=_pow2(headdim), BLOCK_N=min(64, _pow2(nstate)),
        num_warps=4,
    )
    return out if dout is None else (out, dz)


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
    to the final state), is the reference's own formula (chunk._restarted_initial_state), in fp32 / fp64."""
    from .chunk import _restarted_initial_state
    from .naive import discretize_dt, heads_to_groups

    batch, nheads = dt.shape[0], dt.shape[-1]
    a = discretize_dt(dt.float(), None if dt_bias is None else dt_bias.float(), dt_softplus, (dt_min, dt_max))
    h0 = initial_state.float()
    zero = torch.zeros(batch, *h0.shape[-3:], dtype=torch.float32, device=dt.device)
    return _restarted_initial_state(seq_idx, a * A.float(), h0, heads_to_groups(C.float(), nheads), zero)


def _scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, dt_min, dt_max, chunk_size, seq_idx=None):
    """mamba_ssm's ungated forward: y = C h + D x (batch, L, H, P) in x's dtype, and the fp32 final state; with
    document boundaries each document restarts from the initial state (mamba_ssm's scan plus `_restarts`)."""
    m = _mamba_ssd()
    y, _, _, _, _, final = m._mamba_chunk_scan_combined_fwd(
        x.contiguous(), dt.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(), _chunk(chunk_size),
        D=None if D is None else D.contiguous(), z=None, dt_bias=None if dt_bias is None else dt_bias.contiguous(),
        initial_states=_full_state(initial_state, x.shape[0]), seq_idx=_documents(seq_idx), dt_softplus=dt_softplus,
        dt_limit=(dt_min, dt_max),
    )
    if seq_idx is not None and initial_state is not None:
        y_h0, final_h0 = _restarts(seq_idx, dt, A, dt_bias, C, initial_state, dt_softplus, dt_min, dt_max)
        y = (y.float() + y_h0).to(y.dtype)
        final = final.float() + final_h0
    return y, final


def ssd_fwd_cuda(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus, dt_min, dt_max,
                 chunk_size, seq_idx=None):
    from .op import _reference

    if not _usable(x, chunk_size):
        return _reference(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset, dt_softplus,
                          dt_min, dt_max, chunk_size, seq_idx)
    y, final = _scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, dt_min, dt_max, chunk_size, seq_idx)
    if state_offset is not None or y_offset is not None or z is not None:
        y = _readout(y, C.contiguous(), state_offset, y_offset, None if z is None else z.to(x.dtype).contiguous())
    return y.contiguous(), final.float()


def ssd_bwd_cuda(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset,
                 dt_softplus, dt_min, dt_max, chunk_size, seq_idx=None):
    from .op import ssd_bwd_reference

    if not _usable(x, chunk_size):
        return ssd_bwd_reference(dy, dfinal_state, x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset,
                                 y_offset, dt_softplus, dt_min, dt_max, chunk_size, seq_idx)
    m = _mamba_ssd()
    batch, length, nheads, headdim = x.shape
    groups, nstate = B.shape[-2:]
    xc, Cc = x.contiguous(), C.contiguous()
    dy = dy.to(x.dtype).contiguous()
    dz = None
    dy32 = dy  # the gradient before the gate at the best precision we have, for the sums below
    if z is not None:
        y, _ = _scan(x, dt, A, B, C, D, dt_bias, initial_state, dt_softplus, dt_min, dt_max, chunk_size, seq_idx)
        dy32, dz = _readout(y, Cc, state_offset, y_offset, z.to(x.dtype).contiguous(), dout=dy)
        dy = dy32.to(x.dtype)
    dx, ddt, dA, dB, dC, dD, _, ddt_bias, dinit = m._mamba_chunk_scan_combined_bwd(
        dy, xc, dt.contiguous(), A.float().contiguous(), B.contiguous(), Cc, xc, _chunk(chunk_size),
        D=None if D is None else D.contiguous(), z=None, dt_bias=None if dt_bias is None else dt_bias.contiguous(),
        initial_states=_full_state(initial_state, batch),
        dfinal_states=None if dfinal_state is None else dfinal_state.float().contiguous(),
        seq_idx=_documents(seq_idx), dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max),
    )
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
    doff = dyoff = None
    if state_offset is not None:
        # per group: (batch, L, hg·P) against h' as (hg·P, N); the (batch·L, H·P) views need no copies
        hgp = nheads // groups * headdim
        dyg = dy32.view(batch, length, groups, hgp)
        off = state_offset.to(dy32.dtype)
        offg = off.reshape(*off.shape[:-3], groups, hgp, nstate)
        if off.dim() == 3:
            dC = dC.float() + torch.einsum("blgk,gkn->blgn", dyg, offg).float()
            doff = torch.einsum("blgk,blgn->gkn", dyg, Cc.to(dyg.dtype)).float()
        else:
            dC = dC.float() + torch.einsum("blgk,bgkn->blgn", dyg, offg).float()
            doff = torch.einsum("blgk,blgn->bgkn", dyg, Cc.to(dyg.dtype)).float()
        doff = doff.reshape(state_offset.shape)
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


def limit_autotuning(max_configs: int = 1) -> int:
    """Keep at most `max_configs` of each mamba_ssm SSD kernel's autotuning configs (its first ones, plus the
    smallest, which always fits). Autotuning compiles every config at every new specialization (dtype,
    flags, lengths divisible by 16 or not), minutes per shape on a busy machine: tests use 1, a benchmark a
    few. Returns the number of kernels limited (0 when mamba_ssm is unavailable)."""
    if _mamba_ssd() is None:
        return 0
    from triton.runtime.autotuner import Autotuner

    def cost(cfg):
        size = 1
        for k, v in cfg.kwargs.items():
            if k.startswith("BLOCK_SIZE_"):
                size *= v
        return size * (cfg.num_stages or 1)

    count = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("mamba_ssm.ops.triton.ssd_") or mod is None:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, Autotuner) and len(obj.configs) > max_configs:
                smallest = min(obj.configs, key=cost)
                keep = [c for c in obj.configs[: max_configs - 1] if c is not smallest] + [smallest]
                obj.configs = keep
                count += 1
    return count
