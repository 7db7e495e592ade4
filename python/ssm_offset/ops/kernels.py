"""Which implementation serves the scan ops on each device, and the CUDA kernels' build.

The ops are defined in `selective_scan/op.py` and `ssd/op.py` with the PyTorch reference as their
implementation on every device. Importing `ssm_offset.ops` registers CUDA implementations of the
Mamba-1 ops (`ssm_offset::selective_scan_fwd/_bwd/_step`) with `torch.library.register_kernel`; the
registration is cheap and builds nothing. The first CUDA tensor that reaches one of these ops builds
the kernels just in time (`torch.utils.cpp_extension.load`, a minute or two once, then cached in
`$SSM_OFFSET_KERNEL_CACHE` or `~/.cache/ssm_offset/kernels`); `ssm-offset build-kernels` does the
same ahead of time. If the build cannot run (no CUDA toolkit, no compiler), one warning says why and
the ops keep serving CUDA tensors with the reference, so nothing breaks, it is only slow.

`SSM_OFFSET_KERNELS=0` skips the registration: the reference then serves CUDA tensors too (used to
compare the two paths).
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from ._common import empty_scan_like, time_major

_SOURCES = ("binding.cpp", "fwd_f32.cu", "fwd_f16.cu", "fwd_bf16.cu", "bwd_f32.cu", "bwd_f16.cu", "bwd_bf16.cu", "step.cu")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_lock = threading.Lock()
_ext = None
_error: Optional[str] = None
_registered = False


def enabled() -> bool:
    return os.environ.get("SSM_OFFSET_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no")


def source_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "cuda" / "selective_scan"


def cache_dir() -> Path:
    root = os.environ.get("SSM_OFFSET_KERNEL_CACHE") or "~/.cache/ssm_offset/kernels"
    return Path(root).expanduser()


def _arch_flags() -> list:
    archs = {(9, 0)}
    if torch.cuda.is_available():
        archs.add(torch.cuda.get_device_capability())
    return [f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}" for a, b in sorted(archs)]


def build(verbose: bool = False):
    """Build (or load from the cache) the CUDA extension; raises RuntimeError with the reason if it cannot."""
    global _ext, _error
    with _lock:
        if _ext is not None:
            return _ext
        if _error is not None:
            raise RuntimeError(_error)
        try:
            from torch.utils import cpp_extension

            if cpp_extension.CUDA_HOME is None:
                raise RuntimeError("no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)")
            src = source_dir()
            missing = [s for s in _SOURCES if not (src / s).is_file()]
            if missing:
                raise RuntimeError(f"CUDA sources missing under {src}: {', '.join(missing)}")
            tag = f"torch{torch.__version__.split('+')[0]}-cuda{torch.version.cuda}"
            build_dir = cache_dir() / tag
            build_dir.mkdir(parents=True, exist_ok=True)
            _ext = cpp_extension.load(
                name="ssm_offset_selective_scan",
                sources=[str(src / s) for s in _SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo", *_arch_flags(),
                                   *os.environ.get("SSM_OFFSET_NVCC_FLAGS", "").split()],
                build_directory=str(build_dir),
                verbose=verbose,
            )
        except Exception as exc:  # noqa: BLE001 — any build failure means: fall back, say why once
            _error = f"ssm_offset CUDA kernels unavailable: {exc}".strip()
            raise RuntimeError(_error) from exc
        return _ext


def _extension():
    """The built extension, or None (after one warning) when it cannot be built."""
    if _ext is not None:
        return _ext
    if _error is not None:
        return None
    try:
        return build()
    except RuntimeError as exc:
        warnings.warn(f"{exc}; the PyTorch reference serves CUDA tensors (slow)", RuntimeWarning, stacklevel=3)
        return None


def status() -> str:
    if not enabled():
        return "PyTorch reference on every device (kernels disabled by SSM_OFFSET_KERNELS=0)"
    from .ssd import kernel as ssd_kernel

    return f"{_selective_scan_status()}; {ssd_kernel.status()}"


def _kernel_family() -> str:
    """Which Mamba-1 kernels the extension takes. It reads SSM_OFFSET_TIME_PARALLEL and SSM_OFFSET_STATE_PARALLEL at
    every call, as atoi; unset, its own rules (cuda/selective_scan/selective_scan.h: time_parallel, state_parallel)."""
    def forced(name):
        raw = os.environ.get(name, "").strip()
        if not raw:
            return None
        try:
            return int(raw) > 0
        except ValueError:
            return False

    time_parallel, state_parallel = forced("SSM_OFFSET_TIME_PARALLEL"), forced("SSM_OFFSET_STATE_PARALLEL")
    if time_parallel is not None:
        return "time-parallel (SSM_OFFSET_TIME_PARALLEL)" if time_parallel else "channel-parallel (SSM_OFFSET_TIME_PARALLEL)"
    rule = ("time-parallel for channel-major inputs with N <= 16 and 1,025..16,384 batch x channels (the backward: "
            "from 1,025 up), else channel-parallel")
    if state_parallel is None:
        return ("state-parallel for channel-major fp16/bf16 inputs with N = 16, rows 16-byte aligned and more than "
                "1,024 batch x channels (the backward: from 2,048), else " + rule)
    if state_parallel:
        return ("state-parallel forward and backward for channel-major fp16/bf16 inputs with N = 16 and rows 16-byte "
                "aligned (SSM_OFFSET_STATE_PARALLEL); " + rule)
    return rule + " (SSM_OFFSET_STATE_PARALLEL=0)"


def _selective_scan_status() -> str:
    if not enabled():
        return "PyTorch reference on every device (kernels disabled by SSM_OFFSET_KERNELS=0)"
    if _ext is not None:
        family = _kernel_family()
        return (f"CUDA kernels (ssm_offset::selective_scan_*, {family}) for CUDA tensors; "
                "PyTorch reference for CPU tensors")
    if _error is not None:
        return f"PyTorch reference on every device ({_error})"
    if torch.cuda.is_available():
        return ("CUDA kernels registered for CUDA tensors, built on first use (or by `ssm-offset build-kernels`) "
                f"into {cache_dir()}; PyTorch reference for CPU tensors")
    return "PyTorch reference (CPU; no CUDA device)"


# ---------------------------------------------------------------- CUDA implementations of the ops


def _f32(t):
    return None if t is None else t.float().contiguous()


def _i32(t):
    return None if t is None else t.to(torch.int32).contiguous()


def _grouped(t: torch.Tensor, dtype, time_axis: bool) -> torch.Tensor:
    """B or C as (batch, groups, N[, L]) in the kernel's dtype (contiguous for the decode step; the scan lays it
    out with _laid_out)."""
    if t.dim() == (3 if time_axis else 2):
        t = t.unsqueeze(1)
    t = t.to(dtype)
    return t if time_axis else t.contiguous()


def _laid_out(t: Optional[torch.Tensor], tm: bool) -> Optional[torch.Tensor]:
    """t with its last two dims (rows, L) as the scan kernels read them (cuda/selective_scan/selective_scan.h):
    rows adjacent when tm (a transposed view of a (batch, L, rows) projection output), else L adjacent. A copy
    only where t is laid out the other way."""
    if t is None:
        return None
    rows, time = t.dim() - 2, t.dim() - 1
    inner = rows if tm else time
    if t.shape[inner] == 1 or t.stride(inner) == 1:
        return t
    return t.transpose(rows, time).contiguous().transpose(rows, time) if tm else t.contiguous()


def _scan_inputs(tm, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset,
                 seq_idx):
    """The inputs the binding's scan functions share (its `common`), in its order, cast and laid out as the kernels
    read them: u channel-major, delta, B, C, z time-major where tm (cuda/selective_scan/selective_scan.h)."""
    dt = u.dtype
    return (
        _laid_out(u, False), _laid_out(delta.to(dt), tm), _f32(A), _laid_out(_grouped(B, dt, True), tm),
        _laid_out(_grouped(C, dt, True), tm), _f32(D), _laid_out(None if z is None else z.to(dt), tm),
        _f32(delta_bias), bool(delta_softplus), tm, _f32(initial_state), _f32(state_offset), _f32(y_offset),
        _i32(seq_idx),
    )


def _usable(u: torch.Tensor) -> bool:
    return u.dtype in _KERNEL_DTYPES and u.numel() > 0


def _fwd_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset, y_offset,
              seq_idx=None):
    from .selective_scan.op import selective_scan_fwd_reference

    ext = _extension() if _usable(u) else None
    if ext is None:
        return selective_scan_fwd_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                            initial_state, state_offset, y_offset, seq_idx)
    tm = time_major(delta)
    return ext.fwd(
        *_scan_inputs(tm, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset,
                      y_offset, seq_idx),
        empty_scan_like(delta, u.dtype),
    )


def _bwd_cuda(dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
              initial_state, state_offset, y_offset, seq_idx=None, chunk_states=None):
    from .selective_scan.op import laid_out_grads, selective_scan_bwd_reference

    ext = _extension() if _usable(u) else None
    if ext is None:
        return selective_scan_bwd_reference(dy, dfinal_state, u, delta, A, B, C, D, z, delta_bias,
                                            delta_softplus, initial_state, state_offset, y_offset, seq_idx)
    if chunk_states is None:  # called without the forward's states: they come from running it
        chunk_states = _fwd_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset,
                                 y_offset, seq_idx)[2]
    dt, tm = u.dtype, time_major(delta)
    grads = ext.bwd(
        _laid_out(dy.to(dt), tm), _f32(dfinal_state),
        *_scan_inputs(tm, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, state_offset,
                      y_offset, seq_idx),
        _f32(chunk_states),
        u.new_empty(u.shape), empty_scan_like(delta, dt), None if z is None else empty_scan_like(delta, dt),
    )  # du channel-major like the u the kernels read, ddelta and dz laid out like delta
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset)
    out = [torch.empty(0, device=u.device) if x is None else g.reshape(x.shape).to(x.dtype)
           for g, x in zip(grads, inputs)]
    return laid_out_grads(out, inputs)


def _step_cuda(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_offset, y_offset):
    from .selective_scan.step import selective_scan_step_reference

    ext = _extension() if _usable(u) else None
    if ext is None:
        return selective_scan_step_reference(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                             state_offset, y_offset)
    dt = u.dtype
    y, new_state = ext.step(
        state.float().contiguous(), u.contiguous(), delta.to(dt).contiguous(), _f32(A),
        _grouped(B, dt, False), _grouped(C, dt, False), _f32(D), None if z is None else z.to(dt).contiguous(),
        _f32(delta_bias), bool(delta_softplus), _f32(state_offset), _f32(y_offset),
    )
    return y, new_state.to(state.dtype)


def register() -> bool:
    """Attach the CUDA implementations to the Mamba-1 and Mamba-2 ops (once); building waits for the first
    CUDA call. Mamba-2 (SSD) runs mamba_ssm's Triton SSD stages with our chunk-scan kernel (ssd/kernel.py); its
    decode step stays on the reference (a few elementwise ops per token)."""
    global _registered
    if _registered or not enabled():
        return _registered
    from .selective_scan import op  # noqa: F401 — the ops must exist before kernels attach to them
    from .ssd import kernel as ssd_kernel, op as ssd_op  # noqa: F401

    torch.library.register_kernel("ssm_offset::selective_scan_fwd", "cuda", _fwd_cuda)
    torch.library.register_kernel("ssm_offset::selective_scan_bwd", "cuda", _bwd_cuda)
    torch.library.register_kernel("ssm_offset::selective_scan_step", "cuda", _step_cuda)
    torch.library.register_kernel("ssm_offset::ssd_fwd", "cuda", ssd_kernel.ssd_fwd_cuda)
    torch.library.register_kernel("ssm_offset::ssd_bwd", "cuda", ssd_kernel.ssd_bwd_cuda)
    _registered = True
    return True
