"""Host time of the Mamba-2 SSD call on CPU, kernels stubbed: what each arm of benches/bench_ssd.py costs the CPU
before the GPU does anything, which is what its wall clock measures where the call is host-bound.

The Triton launches return at once (their own launch cost, ~12 a forward+backward in every arm, is left out), our
CUDA implementations of `ssm_offset::ssd_fwd/_bwd` are registered for CPU tensors, and the tensors are tiny, so
what is timed is Python and torch dispatch: mamba_ssm's `mamba_chunk_scan_combined` against our op. Needs
mamba_ssm's pure-Python parts (scripts/setup.sh installs them). Timed arms alternate, median of rounds.

    python benches/bench_ssd_host.py [--calls 300] [--rounds 5] [--out benches/results/ssd-host-cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
import types

import torch

from _results import emit

SHAPE = (1, 64, 2, 16, 16)  # batch, L, heads, headdim, d_state: small, so that no arm's arithmetic counts
CHUNK = 64


def stub_gpu(kernel_module):
    """Triton launches return without running; CUDA-only calls answer for the CPU; our CUDA implementations serve
    CPU tensors. Returns the launch counter."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches = [0]

    def launch(self, *args, **kwargs):
        launches[0] += 1

    def autotuned(self, *args, **kwargs):
        self.best_config = self.configs[0]  # what mamba_ssm reads after a launch
        launches[0] += 1

    JITFunction.run = launch
    Autotuner.run = autotuned
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(multi_processor_count=132)
    torch.library.register_kernel("ssm_offset::ssd_fwd", "cpu", kernel_module.ssd_fwd_cuda)
    torch.library.register_kernel("ssm_offset::ssd_bwd", "cpu", kernel_module.ssd_bwd_cuda)
    kernel_module._usable = lambda x, chunk_size: True
    return launches


def make_inputs():
    b, l, h, p, n = SHAPE
    g = torch.Generator().manual_seed(0)
    t = dict(x=torch.randn(b, l, h, p, generator=g), dt=torch.rand(b, l, h, generator=g) - 3,
             A=-torch.rand(h, generator=g) - 0.5, B=torch.randn(b, l, 1, n, generator=g),
             C=torch.randn(b, l, 1, n, generator=g), D=torch.randn(h, generator=g),
             dt_bias=torch.rand(h, generator=g) - 1, h=0.1 * torch.randn(h, p, n, generator=g),
             h0=0.1 * torch.randn(b, h, p, n, generator=g))
    for v in t.values():
        v.requires_grad_(True)
    return t


def arms(m):
    from ssm_offset.ops.ssd import ssd_scan

    def mamba(init=False):
        return lambda t: m.mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], CHUNK, D=t["D"],
                                                     dt_bias=t["dt_bias"], dt_softplus=True,
                                                     initial_states=t["h0"] if init else None)

    def ours(**adapter):
        return lambda t: ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"],
                                  dt_softplus=True, chunk_size=CHUNK, **{k: t[v] for k, v in adapter.items()})

    return {"mamba_ssm plain": mamba(), "mamba_ssm initial state": mamba(init=True), "ours plain": ours(),
            "ours state offset": ours(state_offset="h"), "ours initial state": ours(initial_state="h0"),
            "ours offset + initial state": ours(state_offset="h", initial_state="h0")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from ssm_offset.ops.ssd import kernel as ssd_kernel

    m = ssd_kernel._mamba_ssd()
    if m is None:
        sys.exit(f"bench_ssd_host: {ssd_kernel._error}")
    launches = stub_gpu(ssd_kernel)
    calls = {}
    for name, fn in arms(m).items():
        t, dy = make_inputs(), torch.randn(SHAPE[:4])

        def fwd(fn=fn, t=t):
            with torch.no_grad():
                fn(t)

        def fwd_bwd(fn=fn, t=t, dy=dy):
            for v in t.values():
                v.grad = None
            fn(t).backward(dy)

        calls[name] = (fwd, fwd_bwd)
        for _ in range(10):
            fwd_bwd()
    samples = {name: ([], [], 0.0) for name in calls}
    for _ in range(args.rounds):
        for name, (fwd, fwd_bwd) in calls.items():
            times = []
            for f in (fwd, fwd_bwd):
                launches[0] = 0
                start = time.perf_counter()
                for _ in range(args.calls):
                    f()
                times.append((time.perf_counter() - start) / args.calls * 1e3)
            samples[name][0].append(times[0])
            samples[name][1].append(times[1])
            samples[name] = (*samples[name][:2], launches[0] / args.calls)
    rows = [dict(arm=name, fwd_ms=statistics.median(f), fwd_bwd_ms=statistics.median(fb), launches=n)
            for name, (f, fb, n) in samples.items()]
    base = rows[0]
    meta = dict(machine=f"{platform.machine()} CPU, {os.cpu_count()} cores", torch=torch.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M:%S"),
                shape="B1 L64 H2 P16 N16 chunk 64 fp32 (host time only)",
                command="python benches/bench_ssd_host.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    lines = [f"# Mamba-2 SSD call, host time with kernels stubbed ({meta['machine']})", "",
             f"`{meta['command']}` — torch {meta['torch']}, Python {meta['python']}, {meta['date']}. "
             f"Median of {args.rounds} rounds of {args.calls} calls; Triton launches counted, not run.", "",
             "| arm | fwd ms | fwd+bwd ms | fwd+bwd − mamba_ssm plain | Triton launches (fwd+bwd) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_ms'] - base['fwd_bwd_ms']:+.3f} "
              f"| {r['launches']:.0f} |" for r in rows]
    emit(lines, args.out, meta=meta, rows=rows)


if __name__ == "__main__":
    main()
