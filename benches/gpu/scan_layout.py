"""Which thread layout the Mamba-1 kernels should use at few channels (batch x D < 16384): times the forward
and the backward of our scan, bf16 with a state offset, at the model-level shapes. The layout is picked once per
process from SSM_OFFSET_{FWD,BWD}_NARROW_BELOW (channels; 0 = always 4 states per lane, the default 16384 =
one state per lane below 16384 channels), so the driver runs one process per setting:

    for t in 16384 0; do SSM_OFFSET_FWD_NARROW_BELOW=$t SSM_OFFSET_BWD_NARROW_BELOW=$t python3 benches/gpu/scan_layout.py; done
"""
from __future__ import annotations

import json
import os

import torch

from ssm_offset.ops.selective_scan import selective_scan

SHAPES = [(8, 1536, 1024, 16), (4, 2048, 1024, 16), (1, 4096, 8192, 16), (2, 1536, 2048, 16)]


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    rows = []
    for b, d, length, n in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
        u, delta, z = r(b, d, length), r(b, d, length) * 0.5 - 1, r(b, d, length)
        A = -torch.rand(d, n, generator=g, device="cuda") - 0.1
        B, C = r(b, n, length), r(b, n, length)
        D, bias, off = r(d, dt=torch.float32), r(d, dt=torch.float32), r(d, n, dt=torch.float32) * 0.1
        leaves = [t.requires_grad_() for t in (u, delta, z, B, C, off)]

        def fwd():
            with torch.no_grad():
                return selective_scan(u, delta, A, B, C, D, z, bias, True, state_offset=off)

        y = selective_scan(u, delta, A, B, C, D, z, bias, True, state_offset=off)
        dy = torch.randn_like(y)

        def fwd_bwd():
            out = selective_scan(u, delta, A, B, C, D, z, bias, True, state_offset=off)
            torch.autograd.grad(out, leaves, dy)

        f, fb = timed(fwd), timed(fwd_bwd)
        rows.append({"shape": [b, d, length, n], "fwd_ms": round(f, 4), "fwd_bwd_ms": round(fb, 4),
                     "bwd_ms": round(fb - f, 4)})
    print(json.dumps({"narrow_below": {"fwd": os.environ.get("SSM_OFFSET_FWD_NARROW_BELOW", "16384"),
                                       "bwd": os.environ.get("SSM_OFFSET_BWD_NARROW_BELOW", "16384")},
                      "gpu": torch.cuda.get_device_name(0), "rows": rows}))


if __name__ == "__main__":
    main()
