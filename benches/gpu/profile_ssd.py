"""Where the Mamba-2 SSD forward+backward goes, per arm of benches/bench_ssd.py: a torch-profiler table of CUDA
kernels for one forward+backward (after warm-up and autotuning), to compare our path with mamba_ssm's.

    python3 benches/gpu/profile_ssd.py ["mamba_ssm plain" "ours plain" ...] [--host: cProfile of the host side]
        [--max-configs=N: autotuning configs kept per SSD kernel, as bench_ssd.py's --max-configs]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_ssd  # noqa: E402
from bench_ssd import arms, fwd_bwd  # noqa: E402


def host_profile(fb, name) -> None:
    """Where the host's time goes in 20 forward+backward calls (cProfile, cumulative), and their wall time."""
    import cProfile
    import pstats
    import time

    torch.cuda.synchronize()
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(20):
        fb()
    prof.disable()
    torch.cuda.synchronize()
    print(f"=== host {name}: {(time.perf_counter() - start) / 20 * 1e3:.3f} ms a call (wall, under cProfile)")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(28)


def main() -> None:
    for a in sys.argv[1:]:
        if a.startswith("--max-configs="):
            bench_ssd.MAX_CONFIGS = int(a.split("=", 1)[1])
    fns = arms()
    host = "--host" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or [
        "mamba_ssm plain", "ours plain", "ours state offset", "ours initial state"]
    for name in names:
        fb = fwd_bwd(fns[name])
        for _ in range(3):
            fb()
        torch.cuda.synchronize()
        if host:
            host_profile(fb, name)
            continue
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            fb()
            torch.cuda.synchronize()
        print(f"=== {name}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
        del fb


if __name__ == "__main__":
    main()
