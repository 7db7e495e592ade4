"""Closeness to a float64 reference, as every kernel test checks it (the CUDA Mamba-1 and Mamba-2 tests and the
Triton-interpreter run of the SSD kernels): one bound, one failure message, one record of how close a run came.

An element passes when |got − ref| ≤ atol + rtol·scale, scale = |ref| element-wise, or the tensor's largest |ref|
where the check is norm-wise (for sums that cancel: their rounding error follows the size of their terms, not
of the sum). Tolerances are mamba_ssm's own tests': fp32 rtol 6e-4 / atol 2e-3, bf16 3e-2 / 5e-2, fp16 3e-3 / 5e-3.
"""
from __future__ import annotations

import json
from typing import Optional

import torch

TOL = {torch.float32: (6e-4, 2e-3), torch.bfloat16: (3e-2, 5e-2), torch.float16: (3e-3, 5e-3)}


class ErrorLog:
    """The largest absolute error and error/tolerance ratio seen per (what, dtype) over a run: a GPU run writes it
    (`write`) to show how much room each output had under its bound."""

    def __init__(self) -> None:
        self.worst: dict[tuple[str, str], tuple[float, float]] = {}

    def record(self, name: str, dtype: torch.dtype, err: float, ratio: float) -> None:
        key = (name, str(dtype).replace("torch.", ""))
        prev = self.worst.get(key, (0.0, 0.0))
        self.worst[key] = (max(prev[0], err), max(prev[1], ratio))

    def write(self, path: Optional[str]) -> None:
        if not path:
            return
        rows = {f"{k[0]} [{k[1]}]": {"max_abs_err": v[0], "max_err_over_tol": v[1]} for k, v in sorted(self.worst.items())}
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, seed=None, *,
          tol: Optional[tuple[float, float]] = None, normwise: bool = False,
          log: Optional[ErrorLog] = None) -> Optional[str]:
    """None when `got` is within the bound of `want` (see the module's docstring; `tol` = (rtol, atol) in place
    of TOL[dtype]), else what is wrong, naming `name`, the worst element's error and `seed`. Recorded in `log`."""
    rtol, atol = tol or TOL[dtype]
    at = "" if seed is None else f", seed={seed}"
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}{at}"
    got64, want64 = got.double(), want.double()
    err = (got64 - want64).abs()
    scale = want64.abs()
    if normwise and scale.numel():
        scale = scale.max().expand_as(scale)
    bound = atol + rtol * scale
    worst = err.max().item() if err.numel() else 0.0
    ratio = (err / bound).max().item() if err.numel() else 0.0
    if log is not None:
        log.record(name, dtype, worst, ratio)
    if not torch.isfinite(got).all():
        return f"{name}: non-finite values (unwritten output?){at}"
    if ratio > 1:
        off = int((err > bound).sum())
        return (f"{name}: {off}/{err.numel()} elements off, max abs err {worst:.3g} = {ratio:.2f}x tolerance "
                f"(max |ref| {want64.abs().max().item():.3g}){at}")
    return None
