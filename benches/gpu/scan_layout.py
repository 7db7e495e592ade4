"""Times our Mamba-1 scan, forward and forward+backward (bf16, z, D, delta_bias, softplus, a state offset), at the
benchmark's and the model-level shapes, to choose the kernels' layout and chunking on the GPU. What varies is set
per process: the thread layout by SSM_OFFSET_{FWD,BWD}_NARROW_BELOW (channels; one state per lane below),
compile-time chunking by SSM_OFFSET_NVCC_FLAGS (e.g. -DSSM_OFFSET_TB=8) with its own SSM_OFFSET_KERNEL_CACHE.
--mamba-ssm adds mamba_ssm's selective_scan_fn (no offset) as the reference row. --mixer times ours with delta, z,
B, C and dy as the Mamba-1 mixer hands them over (transposed views of (batch, L, ·) projection outputs).

    for t in 16384 0; do SSM_OFFSET_FWD_NARROW_BELOW=$t SSM_OFFSET_BWD_NARROW_BELOW=$t python3 benches/gpu/scan_layout.py; done
    SSM_OFFSET_NVCC_FLAGS=-DSSM_OFFSET_TB=8 SSM_OFFSET_KERNEL_CACHE=/tmp/k-tb8 python3 benches/gpu/scan_layout.py --tag tb8
"""
from __future__ import annotations

import argparse
import json
import os

import torch

SHAPES = [(8, 4096, 2048, 16), (1, 4096, 8192, 16), (4, 2048, 1024, 16), (8, 1536, 1024, 16), (2, 1536, 2048, 16)]


def timed(fn):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def make_inputs(b, d, length, n, mixer=False):
    """(u, delta, A, B, C, D, z, delta_bias) bf16 where the scan takes them so, and a state offset; with mixer,
    delta, z, B and C as transposed views of (batch, L, ·) projection outputs, as the Mamba-1 mixer has them."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    u, z = r(b, d, length), r(b, d, length)
    delta = (0.5 * torch.rand(b, d, length, generator=g, device="cuda") - 4.0).to(torch.bfloat16)
    A = -torch.rand(d, n, generator=g, device="cuda") - 0.1
    B, C = r(b, n, length), r(b, n, length)
    D, bias = r(d, dt=torch.float32), torch.rand(d, generator=g, device="cuda") - 4.0
    off = 0.1 * r(d, n, dt=torch.float32)
    if mixer:
        delta = delta.transpose(1, 2).contiguous().transpose(1, 2)
        z = torch.cat([u, z], 1).transpose(1, 2).contiguous().transpose(1, 2)[:, d:]
        B, C = torch.cat([B, C], 1).transpose(1, 2).contiguous().transpose(1, 2).split([n, n], 1)
    return (u, delta, A, B, C, D, z, bias), off


def leaves_of(inputs, off):
    """The tensors a forward+backward differentiates (u, delta, z, B, C, D, delta_bias, the offset), now leaves."""
    return [t.requires_grad_() for t in (*inputs[:2], inputs[6], *inputs[3:6], inputs[7], off)]


def passes(call, inputs, off, used, mixer):
    """A forward without autograd and a forward+backward into `used`, with dy laid out like the mixer's if mixer."""
    y = call(inputs, off)
    dy = torch.randn_like(y.transpose(1, 2)).transpose(1, 2) if mixer else torch.randn_like(y)

    def fwd():
        with torch.no_grad():
            call(inputs, off)

    def fwd_bwd():
        torch.autograd.grad(call(inputs, off), used, dy)

    return fwd, fwd_bwd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default=os.environ.get("SSM_OFFSET_NVCC_FLAGS", "") or "default")
    ap.add_argument("--mamba-ssm", action="store_true")
    ap.add_argument("--mixer", action="store_true")
    ap.add_argument("--shapes", default=None,
                    help="BxDxLxN,... in place of the default shapes, e.g. 8x1536x1024x24 (Additional-scan's N)")
    args = ap.parse_args()
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    from ssm_offset.ops.selective_scan import selective_scan

    arms = {"ours": lambda t, off: selective_scan(*t, True, state_offset=off)}
    if args.mamba_ssm:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        arms["mamba_ssm"] = lambda t, off: selective_scan_fn(*t, delta_softplus=True)
    rows = []
    for b, d, length, n in shapes:
        inputs, off = make_inputs(b, d, length, n, args.mixer)
        leaves = leaves_of(inputs, off)
        for arm, call in arms.items():
            fwd, fwd_bwd = passes(call, inputs, off, leaves if arm == "ours" else leaves[:-1], args.mixer)
            f, fb = timed(fwd), timed(fwd_bwd)
            rows.append({"arm": arm, "shape": [b, d, length, n], "fwd_ms": round(f, 4), "fwd_bwd_ms": round(fb, 4),
                         "bwd_ms": round(fb - f, 4)})
            print(f"{args.tag + (' mixer' if args.mixer else ''):28s} {arm:9s} {str((b, d, length, n)):22s} fwd {f:7.3f} ms  fwd+bwd {fb:7.3f} ms",
                  flush=True)
    print(json.dumps({"tag": args.tag, "narrow_below": {"fwd": os.environ.get("SSM_OFFSET_FWD_NARROW_BELOW", "12288"),
                                                        "bwd": os.environ.get("SSM_OFFSET_BWD_NARROW_BELOW", "8192")},
                      "gpu": torch.cuda.get_device_name(0), "rows": rows}))


if __name__ == "__main__":
    main()
