"""Which implementation serves the scan ops on each device.

The ops are defined in `selective_scan/op.py` and `ssd/op.py` with the PyTorch reference as their
implementation on every device. CUDA kernels (from `cuda/`) register themselves on the same ops when
built; until then CUDA tensors run the reference too, which is correct but slow.
"""
from __future__ import annotations

_CUDA_KERNELS_LOADED = False


def status() -> str:
    import torch

    if _CUDA_KERNELS_LOADED:
        return "cuda kernels (ssm_offset::*) for CUDA tensors; PyTorch reference for CPU tensors"
    if torch.cuda.is_available():
        return "PyTorch reference on every device (CUDA kernels not built)"
    return "PyTorch reference (CPU; no CUDA device)"
