"""Where the Mamba-2 SSD forward+backward goes, per arm of benches/bench_ssd.py: a torch-profiler table of CUDA
kernels for one forward+backward (after warm-up and autotuning), to compare our path with mamba_ssm's.

    python3 benches/gpu/profile_ssd.py ["mamba_ssm plain" "ours plain" ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ssd import arms, fwd_bwd  # noqa: E402


def main() -> None:
    fns = arms()
    names = sys.argv[1:] or ["mamba_ssm plain", "ours plain", "ours state offset", "ours initial state"]
    for name in names:
        fb = fwd_bwd(fns[name])
        for _ in range(3):
            fb()
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            fb()
            torch.cuda.synchronize()
        print(f"=== {name}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
        del fb


if __name__ == "__main__":
    main()
