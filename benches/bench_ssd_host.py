"""Host time of the Mamba-2 SSD call on CPU, kernels stubbed: what each arm of benches/bench_ssd.py costs the CPU
before the GPU does anything, which is what its wall clock measures where the call is host-bound.

The Triton launches return at once: their own cost is left out, and they are counted (a forward+backward launches
19 for mamba_ssm's call, 15 for ours, whose backward reuses the forward's stages). Our CUDA implementations of
`ssm_offset::ssd_fwd/_bwd` are registered for CPU tensors, and the tensors are tiny, so what is timed is Python and
torch dispatch: mamba_ssm's `mamba_chunk_scan_combined` against our op. Needs mamba_ssm's pure-Python parts
(scripts/setup.sh installs them). Timed arms alternate, median of rounds.

    python benches/bench_ssd_host.py [--calls 300] [--rounds 5] [--out benches/results/ssd-host-cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types
from statistics import median

import torch

from _results import cpu_meta, emit
from bench_ssd import arms, fwd_bwd, make_inputs

SHAPE = (1, 64, 2, 16, 16)  # batch, L, heads, headdim, d_state: small, so that no arm's arithmetic counts
# (the arms, their inputs and the forward+backward closure are bench_ssd.py's)
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from ssm_offset.ops.ssd import kernel as ssd_kernel

    if ssd_kernel._mamba_ssd() is None:
        sys.exit(f"bench_ssd_host: {ssd_kernel._error}")
    launches = stub_gpu(ssd_kernel)
    inputs = dict(shape=SHAPE, device="cpu", dtype=torch.float32)
    calls = {}
    for name, fn in arms(chunk=CHUNK).items():
        if name.startswith("reference"):  # the post-scan einsum arm: its host cost is mamba_ssm's plus one op
            continue
        t = make_inputs(False, **inputs)

        def fwd(fn=fn, t=t):
            with torch.no_grad():
                fn(t)

        calls[name] = (fwd, fwd_bwd(fn, **inputs))
        for _ in range(10):
            calls[name][1]()
    samples = {name: {"fwd": [], "fwd_bwd": [], "launches": 0.0} for name in calls}
    for _ in range(args.rounds):
        for name, (fwd, fb) in calls.items():
            for key, f in (("fwd", fwd), ("fwd_bwd", fb)):
                launches[0] = 0
                start = time.perf_counter()
                for _ in range(args.calls):
                    f()
                samples[name][key].append((time.perf_counter() - start) / args.calls * 1e3)
            samples[name]["launches"] = launches[0] / args.calls  # of the forward+backward, timed last
    rows = [dict(arm=name, fwd_ms=median(s["fwd"]), fwd_bwd_ms=median(s["fwd_bwd"]), launches=s["launches"])
            for name, s in samples.items()]
    base = rows[0]
    meta = cpu_meta("bench_ssd_host.py", argv, shape="B1 L64 H2 P16 N16 chunk 64 fp32 (host time only)")
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
