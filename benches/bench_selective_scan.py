"""Mamba-1 selective scan on the GPU: ssm-offset's kernels against mamba_ssm, forward and forward+backward.

Arms (bf16 inputs, fp32 A/D/delta_bias/adapters, the same flags everywhere: z, D, delta_bias, softplus):
  mamba_ssm plain         selective_scan_fn without any offset
  reference offset        mamba_ssm's scan + einsum("bdl,bnl,dn->bdl", silu(z), C, h') after it
  ours state offset       ssm_offset selective_scan(state_offset=h')
  ours initial state      ssm_offset selective_scan(initial_state=h0)
  ours plain              ssm_offset selective_scan without adapters
Offsets and initial states are non-zero and require grad in the forward+backward arms. Times are
medians of triton.testing.do_bench (CUDA events, warm-up first); achieved bandwidth counts the fewest
bytes each pass must move (u, delta, z, B, C read, y written; backward also dy read and du, ddelta,
dz, dB, dC written) against a device-to-device copy measured in the same run (read + write bytes).

    python benches/bench_selective_scan.py [--out benches/results/kernels-h100]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(8, 4096, 2048, 16), (1, 4096, 8192, 16), (4, 2048, 1024, 16)]


def bench(fn, warmup=50, rep=300):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


def make_inputs(batch, dim, length, nstate, grad):
    dt = torch.bfloat16
    kw = dict(device="cuda")
    t = dict(
        u=torch.randn(batch, dim, length, dtype=dt, **kw),
        delta=(0.5 * torch.rand(batch, dim, length, **kw) - 4.0).to(dt),
        A=-torch.rand(dim, nstate, **kw) - 0.1,
        B=torch.randn(batch, nstate, length, dtype=dt, **kw),
        C=torch.randn(batch, nstate, length, dtype=dt, **kw),
        D=torch.randn(dim, **kw),
        z=torch.randn(batch, dim, length, dtype=dt, **kw),
        delta_bias=torch.rand(dim, **kw) - 4.0,
        h=0.1 * torch.randn(dim, nstate, **kw),
    )
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def arms(has_mamba):
    from ssm_offset.ops import selective_scan

    out = {}
    if has_mamba:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def mamba_plain(t):
            return selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                     delta_softplus=True)

        def reference_offset(t):
            y = mamba_plain(t)
            off = torch.einsum("bdl,bnl,dn->bdl", F.silu(t["z"]), t["C"], t["h"].to(t["C"].dtype))
            return y + off

        out["mamba_ssm plain"] = mamba_plain
        out["reference offset (mamba_ssm + einsum)"] = reference_offset

    def ours(**adapter):
        def fn(t):
            extra = {k: t["h"] for k in adapter}
            return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                                  delta_softplus=True, **extra)
        return fn

    out["ours state offset"] = ours(state_offset=True)
    out["ours initial state"] = ours(initial_state=True)
    out["ours plain"] = ours()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benches/results/kernels-h100", help="path stem for .json and .md")
    ap.add_argument("--shapes", default=None, help="e.g. 8x4096x2048x16,1x4096x8192x16")
    args = ap.parse_args(argv)
    shapes = SHAPES if not args.shapes else [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    try:
        import mamba_ssm  # noqa: F401

        has_mamba, mamba_version = True, getattr(mamba_ssm, "__version__", "?")
    except ImportError:
        has_mamba, mamba_version = False, None
    from ssm_offset.ops import kernels

    kernels.build()
    bw = copy_bandwidth()
    rows = []
    for shape in shapes:
        b, d, l, n = shape
        bdl, bnl = b * d * l, b * n * l
        bytes_fwd = 2 * (4 * bdl + 2 * bnl)
        bytes_fb = bytes_fwd + 2 * (7 * bdl + 4 * bnl)
        for name, fn in arms(has_mamba).items():
            with torch.no_grad():
                t = make_inputs(*shape, grad=False)
                fwd_ms = bench(lambda: fn(t))
            del t
            t = make_inputs(*shape, grad=True)
            dy = torch.randn(b, d, l, dtype=torch.bfloat16, device="cuda")

            def fb():
                for v in t.values():
                    v.grad = None
                fn(t).backward(dy)

            fb_ms = bench(fb, warmup=20, rep=200)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fb()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del t, dy
            torch.cuda.empty_cache()
            rows.append(dict(
                shape=f"{b}x{d}x{l}x{n}", arm=name, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms,
                fwd_gbps=bytes_fwd / (fwd_ms * 1e-3) / 1e9, fwd_bwd_gbps=bytes_fb / (fb_ms * 1e-3) / 1e9,
                fwd_frac_copy=bytes_fwd / (fwd_ms * 1e-3) / bw, peak_extra_mb=peak / 2**20,
            ))
            r = rows[-1]
            print(f"{r['shape']:>16} {name:<40} fwd {fwd_ms:7.3f} ms ({r['fwd_gbps']:6.0f} GB/s, "
                  f"{100 * r['fwd_frac_copy']:4.1f}% of copy)  fwd+bwd {fb_ms:7.3f} ms  peak +{r['peak_extra_mb']:.0f} MB",
                  flush=True)
    meta = dict(
        machine=torch.cuda.get_device_name(0), command=" ".join([Path(sys.executable).name, *sys.argv]),
        torch=torch.__version__, cuda=torch.version.cuda, mamba_ssm=mamba_version, python=platform.python_version(),
        copy_bandwidth_gbps=bw / 1e9, date=time.strftime("%Y-%m-%d %H:%M:%S"), kernels=kernels.status(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    lines = [f"# Mamba-1 selective scan, bf16, {meta['machine']}", "",
             f"`{meta['command']}` — torch {meta['torch']} (CUDA {meta['cuda']}), mamba_ssm {mamba_version}, "
             f"{meta['date']}; device-to-device copy {bw / 1e9:.0f} GB/s (read + write).", "",
             "| B×D×L×N | arm | fwd ms | fwd GB/s | % of copy | fwd+bwd ms | fwd+bwd GB/s | peak extra MB (fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['arm']} | {r['fwd_ms']:.3f} | {r['fwd_gbps']:.0f} | "
                     f"{100 * r['fwd_frac_copy']:.1f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_gbps']:.0f} | "
                     f"{r['peak_extra_mb']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
