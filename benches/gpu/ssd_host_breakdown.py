"""Host time of the Mamba-2 SSD call on the GPU machine, broken down: each of mamba_ssm's Python stage wrappers and
our chunk-scan launch, one Triton launch through its autotuner against its JIT function with the cached config, and
our op's dispatch against its CUDA implementation called directly. Tiny inputs (B1 L256 H2 P64 N128), so that the
GPU finishes before the host returns and each figure is host time; a sync after every call keeps queues empty.
Median over calls, in µs. What bench_ssd.py's back-to-back column says is host-bound, this says where it goes.

    python3 benches/gpu/ssd_host_breakdown.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benches/: bench_ssd's inputs
import bench_ssd  # noqa: E402

CHUNK = 256
SHAPE = (1, 256, 2, 64, 128)


def host_us(fn, calls=300, warmup=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def main() -> None:
    import ssm_offset.ops  # noqa: F401  registers the CUDA implementations
    from ssm_offset.ops.ssd import kernel as K
    from ssm_offset.ops.ssd.scan_kernel import chunk_scan
    from triton.runtime.autotuner import Autotuner

    bench_ssd.MAX_CONFIGS = 4
    m = K._mamba_ssd()
    if m is None:
        sys.exit(f"ssd_host_breakdown: {K._error}")
    arms = bench_ssd.arms(CHUNK)
    rows = []
    for name in ("mamba_ssm plain", "ours plain", "ours state offset", "ours initial state"):
        t = bench_ssd.make_inputs(False, shape=SHAPE)
        with torch.no_grad():
            rows.append((f"{name}: forward, no grad", host_us(lambda: arms[name](t))))
        rows.append((f"{name}: forward+backward", host_us(bench_ssd.fwd_bwd(arms[name], shape=SHAPE))))
    t = bench_ssd.make_inputs(False, shape=SHAPE)
    x, dt, A, B, C, D, bias = (t[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))
    args = (x, dt, A, B, C, D, None, bias, None, None, None, True, 0.0, float("inf"), CHUNK, None)
    with torch.no_grad():
        rows.append(("ours: the op (dispatch + CUDA implementation)", host_us(lambda: torch.ops.ssm_offset.ssd_fwd(*args))))
        rows.append(("ours: its CUDA implementation called directly", host_us(lambda: K.ssd_fwd_cuda(*args))))
        Af = A.float().contiguous()
        dA, dtc = m._chunk_cumsum_fwd(dt, Af, CHUNK, dt_bias=bias, dt_softplus=True)
        own = m._chunk_state_fwd(B, x, dtc, dA, states_in_fp32=True)
        entering, _ = m._state_passing_fwd(own.flatten(-2), dA[:, :, :, -1], chunk_size=CHUNK, out_dtype=C.dtype)
        entering = entering.unflatten(-1, own.shape[-2:])
        cb = m._bmm_chunk_fwd(C, B, CHUNK, output_dtype=torch.float32)
        stages = {
            "mamba_ssm _chunk_cumsum_fwd": lambda: m._chunk_cumsum_fwd(dt, Af, CHUNK, dt_bias=bias, dt_softplus=True),
            "mamba_ssm _chunk_state_fwd": lambda: m._chunk_state_fwd(B, x, dtc, dA, states_in_fp32=True),
            "mamba_ssm _state_passing_fwd": lambda: m._state_passing_fwd(own.flatten(-2), dA[:, :, :, -1],
                                                                         chunk_size=CHUNK, out_dtype=C.dtype),
            "mamba_ssm _bmm_chunk_fwd": lambda: m._bmm_chunk_fwd(C, B, CHUNK, output_dtype=torch.float32),
            "mamba_ssm _chunk_scan_fwd": lambda: m._chunk_scan_fwd(cb, x, dtc, dA, C, entering, D=D),
            "ours chunk_scan (in its place)": lambda: chunk_scan(cb, x, dtc, dA, C, entering, D=D),
        }
        for name, fn in stages.items():
            rows.append((name, host_us(fn)))
        # one autotuned launch as its wrapper makes it, against the JIT function with the config the autotuner cached
        seen = {}
        run = Autotuner.run

        def spy(self, *a, **k):
            seen.setdefault(self, (a, k))
            return run(self, *a, **k)

        Autotuner.run = spy
        try:
            stages["mamba_ssm _chunk_cumsum_fwd"]()
        finally:
            Autotuner.run = run
        for tuner, (a, k) in seen.items():
            name = getattr(tuner.fn, "__name__", "kernel")
            cfg = tuner.best_config.all_kwargs()
            rows.append((f"{name}: Autotuner.run", host_us(lambda: tuner.run(*a, **k))))
            rows.append((f"{name}: JITFunction.run, cached config", host_us(lambda: tuner.fn.run(*a, **k, **cfg))))
    print(f"# SSD host time, {torch.cuda.get_device_name()}, shape {SHAPE}, chunk {CHUNK}\n")
    print("| what | host µs |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
