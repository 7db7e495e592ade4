"""Mamba-2 SSD on the GPU: ssm-offset's CUDA path (mamba_ssm's Triton SSD stages + our chunk-scan kernel, which
adds the offsets in the same pass) against mamba_ssm's `mamba_chunk_scan_combined`, forward and forward+backward.

Shape B8 L2048 H64 P64 N128, one group, chunk 256, bf16 x/B/C/dt, fp32 A/D/dt_bias/adapters, D + dt_bias +
softplus on every arm, no z (Mamba-2 gates in its RMSNorm). Arms:
  mamba_ssm plain              mamba_chunk_scan_combined, no initial state
  mamba_ssm initial state      the same with initial_states
  reference offset             mamba_ssm plain + einsum("blgn,hpn->blhp", C, h') after it
  ours plain / state offset / initial state / offset + initial state      ssm_offset ssd_scan
Offsets and initial states are non-zero and require grad in forward+backward. Every arm is set up (inputs,
autotuning) before any is timed, then timed in round-robin rounds: medians of do_bench, and the host and wall
time of forward+backward calls issued back to back.

    python benches/bench_ssd.py [--rounds 3] [--max-configs K] [--out benches/results/ssd-h100]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from statistics import median

import torch

from _results import emit

SHAPE = (8, 2048, 64, 64, 128)  # batch, L, heads, headdim, d_state
CHUNK = 256
MAX_CONFIGS = 0  # --max-configs: autotuning configs kept per SSD kernel, mamba_ssm's and ours (0 = all)


def bench(fn, warmup=50, rep=300):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def make_inputs(grad, shape=SHAPE, device="cuda", dtype=torch.bfloat16):
    """Every arm's inputs: x, dt, B, C in `dtype`, the rest fp32 (benches/bench_ssd_host.py asks for tiny CPU ones)."""
    b, l, h, p, n = shape
    kw = dict(device=device)
    bf = dtype
    t = dict(
        x=torch.randn(b, l, h, p, dtype=bf, **kw),
        dt=(torch.rand(b, l, h, **kw) - 3.0).to(bf),
        A=-torch.rand(h, **kw) - 0.5,
        B=(torch.randn(b, l, 1, n, **kw) * n ** -0.5).to(bf),
        C=(torch.randn(b, l, 1, n, **kw) * n ** -0.5).to(bf),
        D=torch.randn(h, **kw),
        dt_bias=torch.rand(h, **kw) - 1.0,
        h=0.1 * torch.randn(h, p, n, **kw),
        h0=0.1 * torch.randn(b, h, p, n, **kw),
    )
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def fwd_bwd(fn, **inputs):
    """One forward+backward of an arm on fresh inputs that require grad (make_inputs' keywords), as a closure
    (inputs held by it)."""
    t = make_inputs(True, **inputs)
    dy = torch.randn_like(t["x"])

    def fb():
        for v in t.values():
            v.grad = None
        fn(t).backward(dy)

    return fb


def arms(chunk=CHUNK):
    from ssm_offset.ops.ssd import kernel as ssd_kernel, ssd_scan

    m = ssd_kernel._mamba_ssd()
    if m is None:
        sys.exit(f"bench_ssd: {ssd_kernel._error}")
    if MAX_CONFIGS:
        ssd_kernel.limit_autotuning(MAX_CONFIGS)

    def mamba(init=False, offset=False):
        def fn(t):
            y = m.mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"],
                                            dt_bias=t["dt_bias"], dt_softplus=True,
                                            initial_states=t["h0"] if init else None)
            if offset:
                y = y + torch.einsum("blgn,hpn->blhp", t["C"], t["h"].to(y.dtype))
            return y
        return fn

    def ours(**adapter):
        def fn(t):
            kw = {k: t[v] for k, v in adapter.items()}
            return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"],
                            dt_softplus=True, chunk_size=chunk, **kw)
        return fn

    return {
        "mamba_ssm plain": mamba(),
        "mamba_ssm initial state": mamba(init=True),
        "reference offset (mamba_ssm + einsum)": mamba(offset=True),
        "ours plain": ours(),
        "ours state offset": ours(state_offset="h"),
        "ours initial state": ours(initial_state="h0"),
        "ours offset + initial state": ours(state_offset="h", initial_state="h0"),
    }


def graphed(fb):
    """fb captured once in a CUDA graph (after the warm-up calls that autotuned it) and replayed: what its kernels cost
    with the host's launch path taken out, as a step under torch.compile(mode="reduce-overhead") runs it. This shape
    is host-bound otherwise, for mamba_ssm's call as for ours (back_to_back)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fb()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fb()
    return graph.replay


def back_to_back(fn, calls=50):
    """(host ms, wall ms) a call over `calls` calls issued back to back, as a training loop issues them: host is
    the time to return from the calls (launches queued), wall includes waiting for the GPU at the end. Where
    host ≈ wall the arm is host-bound and its do_bench figure measures the host, not the kernels."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return host / calls * 1e3, wall / calls * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-configs", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every arm this many times, round-robin (order and clock drift average out)")
    args = ap.parse_args(argv)
    global MAX_CONFIGS
    MAX_CONFIGS = args.max_configs
    fns = arms()
    fwd_inputs, fbs, peaks = {}, {}, {}
    for name, fn in fns.items():  # every arm's inputs, autotuning and peak memory, before any timing
        fwd_inputs[name] = make_inputs(False)
        with torch.no_grad():
            fn(fwd_inputs[name])
        fbs[name] = fwd_bwd(fn)
        fbs[name]()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fbs[name]()
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    replays = {name: graphed(fb) for name, fb in fbs.items()}
    samples = {name: {"fwd": [], "fwdbwd": [], "graph": [], "host": [], "wall": []} for name in fns}
    for r in range(args.rounds):
        for name, fn in fns.items():
            t = fwd_inputs[name]
            with torch.no_grad():
                samples[name]["fwd"].append(bench(lambda: fn(t)))
            samples[name]["fwdbwd"].append(bench(fbs[name], warmup=20, rep=200))
            samples[name]["graph"].append(bench(replays[name], warmup=10, rep=200))
            host, wall = back_to_back(fbs[name])
            samples[name]["host"].append(host)
            samples[name]["wall"].append(wall)
            s = samples[name]
            print(f"round {r}: {name:40s} fwd {s['fwd'][-1]:7.3f} ms   fwd+bwd {s['fwdbwd'][-1]:7.3f} ms   "
                  f"graphed {s['graph'][-1]:7.3f} ms   back to back: host {host:6.3f} wall {wall:6.3f} ms", flush=True)
    rows = []
    for name, s in samples.items():
        rows.append(dict(arm=name, fwd_ms=median(s["fwd"]), fwdbwd_ms=median(s["fwdbwd"]),
                         fwdbwd_spread_ms=max(s["fwdbwd"]) - min(s["fwdbwd"]), graph_ms=median(s["graph"]),
                         host_ms=median(s["host"]), b2b_wall_ms=median(s["wall"]),
                         peak_extra_mb=peaks[name], samples=s))
    plain = {r["arm"]: r for r in rows}["mamba_ssm plain"]
    for r in rows:
        r["fwd_vs_mamba_plain"] = r["fwd_ms"] / plain["fwd_ms"]
        r["fwdbwd_vs_mamba_plain"] = r["fwdbwd_ms"] / plain["fwdbwd_ms"]
        r["b2b_vs_mamba_plain"] = r["b2b_wall_ms"] / plain["b2b_wall_ms"]
        r["graph_vs_mamba_plain"] = r["graph_ms"] / plain["graph_ms"]
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M:%S"),
                shape="B8 L2048 H64 P64 N128 G1 chunk 256 bf16, D + dt_bias + softplus, no z",
                autotune_configs_per_kernel=MAX_CONFIGS or "all", rounds=args.rounds,
                command="python3 benches/bench_ssd.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    lines = [f"# Mamba-2 SSD, {meta['shape']}, {meta['device']}", "",
             f"`{meta['command']}` — torch {meta['torch']} (CUDA {meta['cuda']}), {meta['date']}.", "",
             f"Medians over {args.rounds} round-robin rounds. fwd, fwd+bwd: do_bench (L2 flushed before each call); "
             "in a CUDA graph: one forward+backward captured and replayed (do_bench), the kernels without the host's "
             "launch path; back to back: 50 forward+backward calls issued in a row, host = time to return from them, "
             "wall = until the GPU finished (host ≈ wall: host-bound).", "",
             "| arm | fwd ms | × mamba_ssm plain | fwd+bwd ms (spread) | × mamba_ssm plain | fwd+bwd in a CUDA graph ms "
             "| × mamba_ssm plain | back to back host / wall ms | wall × mamba_ssm plain | peak extra MB (fwd+bwd) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['fwd_ms']:.3f} | {r['fwd_vs_mamba_plain']:.2f} | {r['fwdbwd_ms']:.3f} "
                     f"({r['fwdbwd_spread_ms']:.3f}) | {r['fwdbwd_vs_mamba_plain']:.2f} | {r['graph_ms']:.3f} | "
                     f"{r['graph_vs_mamba_plain']:.2f} | {r['host_ms']:.3f} / "
                     f"{r['b2b_wall_ms']:.3f} | {r['b2b_vs_mamba_plain']:.2f} | {r['peak_extra_mb']:.0f} |")
    emit(lines, args.out, meta=meta, rows=rows)


if __name__ == "__main__":
    main()
