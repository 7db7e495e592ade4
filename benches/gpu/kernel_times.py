"""GPU kernel time of one Mamba-1 scan forward and forward+backward (bf16, z, D, delta_bias, softplus, a state
offset), summed over the kernels torch.profiler records, for ours with each kernel family forced (channel-parallel,
time-parallel, state-parallel: SSM_OFFSET_TIME_PARALLEL / _STATE_PARALLEL, which the extension reads at every call),
ours as the rules choose, and mamba_ssm. Wall-clock timings of a forward+backward at few channels are host-bound
(autograd and allocation around ~1 ms of launches); this separates what the kernels cost.

    python3 benches/gpu/kernel_times.py --shapes 4x2048x1024x16,1x4096x8192x16 [--mixer]
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from scan_layout import leaves_of, make_inputs, passes


def kernel_ms(fn, reps=5):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA"
                   and not e.key.startswith("Memset") and "Memcpy" not in e.key)
    return total_us / reps / 1000.0


FAMILY_VARS = ("SSM_OFFSET_TIME_PARALLEL", "SSM_OFFSET_STATE_PARALLEL")


def use_family(env) -> None:
    """The extension's family variables exactly as `env` sets them (the others unset: the rules)."""
    for k in FAMILY_VARS:
        os.environ.pop(k, None)
    os.environ.update(env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8x4096x2048x16,1x4096x8192x16,4x2048x1024x16,8x1536x1024x16")
    ap.add_argument("--mixer", action="store_true")
    ap.add_argument("--no-mamba-ssm", action="store_true")
    args = ap.parse_args()
    from ssm_offset.ops.selective_scan import selective_scan

    # each family forced through the variables the extension reads at every call (step.cu); the state-parallel
    # kernel is a forward only, its arm's backward the rule's
    families = {"channel-parallel": {"SSM_OFFSET_TIME_PARALLEL": "0", "SSM_OFFSET_STATE_PARALLEL": "0"},
                "time-parallel": {"SSM_OFFSET_TIME_PARALLEL": "1", "SSM_OFFSET_STATE_PARALLEL": "0"},
                "state-parallel": {"SSM_OFFSET_STATE_PARALLEL": "1"}, "by the rules": {}}
    arms = {f"ours {fam}": (lambda t, off: selective_scan(*t, True, state_offset=off), env)
            for fam, env in families.items()}
    if not args.no_mamba_ssm:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        arms["mamba_ssm"] = (lambda t, off: selective_scan_fn(*t, delta_softplus=True), None)
    rows = []
    for shape in args.shapes.split(","):
        b, d, length, n = (int(v) for v in shape.split("x"))
        inputs, off = make_inputs(b, d, length, n, args.mixer)
        leaves = leaves_of(inputs, off)
        for arm, (call, env) in arms.items():
            use_family(env or {})
            used = leaves if arm.startswith("ours") else leaves[:-1]
            fwd, fwd_bwd = passes(call, inputs, off, used, args.mixer)
            f, fb = kernel_ms(fwd), kernel_ms(fwd_bwd)
            rows.append({"arm": arm, "shape": [b, d, length, n], "mixer": args.mixer, "fwd_kernel_ms": round(f, 4),
                         "fwd_bwd_kernel_ms": round(fb, 4)})
            print(f"{arm:24s} {shape:16s}{' mixer' if args.mixer else ''} kernels: fwd {f:7.3f} ms  fwd+bwd {fb:7.3f} ms",
                  flush=True)
    use_family({})
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows}))


if __name__ == "__main__":
    main()
