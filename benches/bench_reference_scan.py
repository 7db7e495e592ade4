"""The scans' PyTorch reference on CPU (what CPU tensors, and CUDA tensors without kernels, run): the Mamba-1
`selective_scan` and Mamba-2 `ssd_scan` ops with a State offset, forward (no grad) and forward+backward
(the op's backward recomputes the reference under torch.func.vjp), fp32, torch's default threads.

    python benches/bench_reference_scan.py [--repeat 5] [--out benches/results/reference-scan-cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _results import cpu_meta, emit

MAMBA1 = [(4, 512, 256, 16), (2, 1536, 512, 16)]  # batch, channels, L, d_state
MAMBA2 = [(4, 256, 8, 64, 64)]  # batch, L, heads, headdim, d_state


def mamba1_call(batch, dim, length, nstate, grad):
    from ssm_offset.ops.selective_scan import selective_scan

    g = torch.Generator().manual_seed(0)
    t = dict(u=torch.randn(batch, dim, length, generator=g), delta=torch.rand(batch, dim, length, generator=g) - 2,
             A=-torch.rand(dim, nstate, generator=g) - 0.1, B=torch.randn(batch, nstate, length, generator=g),
             C=torch.randn(batch, nstate, length, generator=g), D=torch.randn(dim, generator=g),
             z=torch.randn(batch, dim, length, generator=g), delta_bias=torch.rand(dim, generator=g),
             state_offset=0.1 * torch.randn(dim, nstate, generator=g))
    return _call(lambda: selective_scan(**t, delta_softplus=True), t, grad)


def mamba2_call(batch, length, heads, headdim, nstate, grad):
    from ssm_offset.ops.ssd import ssd_scan

    g = torch.Generator().manual_seed(0)
    t = dict(x=torch.randn(batch, length, heads, headdim, generator=g),
             dt=torch.rand(batch, length, heads, generator=g) - 2, A=-torch.rand(heads, generator=g) - 0.5,
             B=torch.randn(batch, length, 1, nstate, generator=g), C=torch.randn(batch, length, 1, nstate, generator=g),
             D=torch.randn(heads, generator=g), dt_bias=torch.rand(heads, generator=g),
             state_offset=0.1 * torch.randn(heads, headdim, nstate, generator=g))
    return _call(lambda: ssd_scan(**t, dt_softplus=True, chunk_size=64), t, grad)


def _call(fn, t, grad):
    if not grad:
        def fwd():
            with torch.no_grad():
                fn()
        return fwd
    for v in t.values():
        v.requires_grad_(True)

    def fwd_bwd():
        for v in t.values():
            v.grad = None
        fn().sum().backward()
    return fwd_bwd


def timed(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    cases = [("Mamba-1 selective_scan", f"B{b} D{d} L{l} N{n}", mamba1_call, (b, d, l, n)) for b, d, l, n in MAMBA1]
    cases += [("Mamba-2 ssd_scan", f"B{b} L{l} H{h} P{p} N{n}", mamba2_call, (b, l, h, p, n)) for b, l, h, p, n in MAMBA2]
    for op, shape, make, dims in cases:
        fwd = timed(make(*dims, grad=False), args.repeat)
        fwd_bwd = timed(make(*dims, grad=True), args.repeat)
        rows.append(dict(op=op, shape=shape, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd))
        print(f"{op:24s} {shape:22s} fwd {fwd:8.1f} ms   fwd+bwd {fwd_bwd:8.1f} ms", flush=True)
    meta = cpu_meta("bench_reference_scan.py", argv, threads=torch.get_num_threads())
    lines = [f"# Scan references on CPU ({meta['machine']}, {meta['threads']} threads)", "",
             f"`{meta['command']}` — torch {meta['torch']}, {meta['date']}. fp32, with a State offset; "
             f"median of {args.repeat}.", "",
             "| op | shape | fwd ms | fwd+bwd ms |", "|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['shape']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} |" for r in rows]
    emit(lines, args.out, meta=meta, rows=rows)


if __name__ == "__main__":
    main()
