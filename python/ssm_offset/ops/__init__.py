"""Scan operations. Models call these functions only; kernels attach to the ops underneath.

    selective_scan / selective_scan_step   Mamba-1 (S6), parallel and one-token faces
    ssd_scan / ssd_step                    Mamba-2 (SSD), parallel and one-token faces
"""
from ._common import ScanShapeError
from .selective_scan import selective_scan, selective_scan_step
from .ssd import ssd_scan, ssd_step
from . import kernels as _kernels

_kernels.register()  # CUDA implementations attach now; they build on the first CUDA call (see kernels.py)

__all__ = ["ScanShapeError", "selective_scan", "selective_scan_step", "ssd_scan", "ssd_step"]
