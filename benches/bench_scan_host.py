"""Host time of the Mamba-1 scan op on CPU, CUDA extension stubbed: what `selective_scan` forward and
forward+backward cost the CPU around the kernels (shape checks, torch.library dispatch and its autograd wrapper, our
glue in ops/kernels.py), which is what a forward+backward's wall clock measures where few channels make it
host-bound (benches/results/kernels-h100.md at 4x2048x1024). The stub returns buffers of the binding's shapes without
computing; tensors are tiny, so arithmetic does not count. With --profile, the largest entries of one arm by own time.

    python benches/bench_scan_host.py [--calls 500] [--rounds 5] [--profile] [--out benches/results/scan-host-cpu]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from statistics import median

import torch

from _results import cpu_meta, emit

SHAPE = (2, 8, 16, 4)  # batch, D, L, N


class StubExtension:
    """The binding's fwd/bwd signatures (cuda/selective_scan/binding.cpp), returning what it returns, uncomputed;
    counts its calls (proof that the timed path is the CUDA implementations', not the reference)."""

    calls = {"fwd": 0, "bwd": 0}

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, softplus, time_major, h0, hoff, yoff, seq_idx, y):
        self.calls["fwd"] += 1
        from ssm_offset.ops.selective_scan.op import chunk_count

        b, d, n = u.shape[0], u.shape[1], A.shape[1]
        return y, torch.empty(b, d, n), torch.empty(b, d, chunk_count(u.shape[2]), n)

    def bwd(self, dout, dfinal, u, delta, A, B, C, D, z, delta_bias, softplus, time_major, h0, hoff, yoff, seq_idx,
            states, du, ddelta, dz):
        self.calls["bwd"] += 1
        zeros = lambda t: None if t is None else torch.zeros(t.shape)  # noqa: E731
        return [du, ddelta, zeros(A), zeros(B), zeros(C), zeros(D), dz, zeros(delta_bias), zeros(h0), zeros(hoff),
                zeros(yoff)]


def stub_kernels():
    """Our CUDA implementations serve CPU tensors through the stub."""
    from ssm_offset.ops import kernels

    kernels._ext = StubExtension()
    kernels._usable = lambda u: True
    torch.library.register_kernel("ssm_offset::selective_scan_fwd", "cpu", kernels._fwd_cuda)
    torch.library.register_kernel("ssm_offset::selective_scan_bwd", "cpu", kernels._bwd_cuda)


def arms():
    """name -> (forward without autograd, forward+backward) closures over fresh tiny inputs."""
    from ssm_offset.ops.selective_scan import selective_scan

    b, d, length, n = SHAPE
    out = {}
    for name, extra in (("plain", {}), ("state offset", {"state_offset": (d, n)}),
                        ("initial state", {"initial_state": (d, n)})):
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        u, delta, z, B, C = r(b, d, length), r(b, d, length), r(b, d, length), r(b, n, length), r(b, n, length)
        A, D, bias = -torch.rand(d, n, generator=g), r(d), r(d)
        kw = {k: r(*s) for k, s in extra.items()}
        leaves = [t.requires_grad_() for t in (u, delta, z, B, C, D, bias, *kw.values())]
        dy = torch.randn(b, d, length, generator=g)

        def fwd(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, bias=bias, kw=kw):
            with torch.no_grad():
                selective_scan(u, delta, A, B, C, D, z, bias, True, **kw)

        def fwd_bwd(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, bias=bias, kw=kw, leaves=leaves, dy=dy):
            torch.autograd.grad(selective_scan(u, delta, A, B, C, D, z, bias, True, **kw), leaves, dy)

        out[name] = (fwd, fwd_bwd)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stub_kernels()
    calls = arms()
    for fwd, fb in calls.values():
        for _ in range(20):
            fwd(), fb()
    samples = {name: {"fwd": [], "fwd_bwd": []} for name in calls}
    for _ in range(args.rounds):  # arms alternate, so drift in the machine's speed spreads over all of them
        for name, (fwd, fb) in calls.items():
            for key, f in (("fwd", fwd), ("fwd_bwd", fb)):
                start = time.perf_counter()
                for _ in range(args.calls):
                    f()
                samples[name][key].append((time.perf_counter() - start) / args.calls * 1e3)
    rows = [dict(arm=name, fwd_ms=median(s["fwd"]), fwd_bwd_ms=median(s["fwd_bwd"])) for name, s in samples.items()]
    meta = cpu_meta("bench_scan_host.py", argv, shape="B{} D{} L{} N{} fp32 (host time only)".format(*SHAPE))
    lines = [f"# Mamba-1 scan op, host time with the CUDA extension stubbed ({meta['machine']})", "",
             f"`{meta['command']}` — torch {meta['torch']}, Python {meta['python']}, {meta['date']}. "
             f"Median of {args.rounds} rounds of {args.calls} calls.", "",
             "| arm | fwd ms | fwd+bwd ms |", "|---|---|---|"]
    lines += [f"| {r['arm']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} |" for r in rows]
    profile = None
    if args.profile:
        prof = cProfile.Profile()
        fb = calls["state offset"][1]
        prof.enable()
        for _ in range(200):
            fb()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        profile = text.getvalue()
        body = profile[profile.index("ncalls"):].rstrip()
        lines += ["", "State offset arm, 200 forward+backward calls under cProfile, by own time:", "", "```", body, "```"]
    emit(lines, args.out, meta=meta, rows=rows, profile=profile, stub_calls=StubExtension.calls)


if __name__ == "__main__":
    main()
