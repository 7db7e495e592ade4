"""One forward + backward of the Mamba-1 scan at a shape, for a profiler to look at (bf16, z, D, delta_bias,
softplus, a state offset; with --mamba-ssm the same call through mamba_ssm's selective_scan_fn; --mixer: the
inputs laid out as the Mamba-1 mixer has them, scan_layout.make_inputs):

    ncu --clock-control none -k regex:bwd_kernel --launch-skip 1 -c 1 python3 benches/gpu/profile_scan.py 8 4096 2048 16
"""
from __future__ import annotations

import sys

import torch
from scan_layout import make_inputs


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    b, d, length, n = (int(a) for a in args) if args else (8, 4096, 2048, 16)
    inputs, off = make_inputs(b, d, length, n, "--mixer" in sys.argv)
    u, delta, A, B, C, D, z, bias = inputs
    leaves = [t.requires_grad_() for t in (u, delta, z, B, C, D, bias, off)]
    if "--mamba-ssm" in sys.argv:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        run = lambda: selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)  # noqa: E731
        leaves.pop()
    else:
        from ssm_offset.ops.selective_scan import selective_scan

        run = lambda: selective_scan(u, delta, A, B, C, D, z, bias, True, state_offset=off)  # noqa: E731
    for _ in range(2):
        y = run()
        torch.autograd.grad(y, leaves, torch.ones_like(y))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
