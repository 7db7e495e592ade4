"""Which SDPA backends take TransMamba's attention path, and how fast, for its two exact head layouts.

TransMamba's attention is Q = C, K = B (G groups of width N) and V = x (H heads of width P). Two layouts give
the same result: "grouped" runs one attention per group with the group's H/G heads concatenated as a value of
width (H/G)·P; "per_head" repeats Q/K to the H heads and attends with values of width P. Run on a GPU:
    python benches/transmamba_attention_layout.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def layouts(C, B, x):
    b, L, G, N = C.shape
    H, P = x.shape[2:]
    grouped = (C.transpose(1, 2), B.transpose(1, 2), x.reshape(b, L, G, -1).transpose(1, 2))
    rep = H // G
    per_head = (C.repeat_interleave(rep, 2).transpose(1, 2), B.repeat_interleave(rep, 2).transpose(1, 2),
                x.transpose(1, 2))
    return {"grouped": grouped, "per_head": per_head}


def bench(q, k, v, backend, iters=10):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.sum().backward()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.sum().backward()
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3, o


def main():
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    # (batch, L, H, P, G, N): a ~15M-parameter shape and a Mamba-2-130M-like shape
    for b, L, H, P, G, N in [(8, 1024, 8, 64, 1, 64), (8, 2048, 24, 64, 1, 128), (8, 2048, 24, 64, 8, 128)]:
        C = torch.randn(b, L, G, N, device=dev, dtype=dt)
        B = torch.randn(b, L, G, N, device=dev, dtype=dt)
        x = torch.randn(b, L, H, P, device=dev, dtype=dt)
        ref = None
        for name, (q, k, v) in layouts(C, B, x).items():
            for bname, backend in BACKENDS.items():
                try:
                    ms, o = bench(q, k, v, backend)
                except RuntimeError as e:
                    print(f"b{b} L{L} H{H} P{P} G{G} N{N} {name:9s} {bname:9s} unsupported ({str(e).splitlines()[0][:60]})")
                    continue
                o = o.transpose(1, 2).reshape(b, L, H, P).float()
                ref = o if ref is None else ref
                print(f"b{b} L{L} H{H} P{P} G{G} N{N} {name:9s} {bname:9s} fwd+bwd {ms:7.2f} ms  "
                      f"max|diff| {(o - ref).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
