"""The SSD chunk-scan Triton kernel (ops/ssd/scan_kernel.py) under Triton's CPU interpreter, in its own process
(TRITON_INTERPRET=1 must be set before any kernel is defined, and must not leak into other tests' kernels):
`python ssd_interpret_child.py OUT.json`. Writes {case id: [failure, ...]} for test_ssd_interpret.py.

"kernel" cases feed the kernel the stages before it (the within-chunk cumsum of Δ·A, C·Bᵀ per chunk, the
state entering each chunk) from a float64 torch version written here, and compare its output, forward and
backward mode, with the float64 chunked reference. "pipeline" cases, where mamba_ssm is importable, run the
whole CUDA forward and backward (mamba_ssm's Triton stages + ours, kernel.ssd_fwd_cuda / ssd_bwd_cuda) on CPU
tensors, fp32 only: mamba_ssm's own bf16 kernels give garbage under the interpreter.
"""
import contextlib
import json
import os
import sys
import types
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared tolerances

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)

from ssm_offset.ops.ssd import kernel as ssd_kernel  # noqa: E402
from ssm_offset.ops.ssd.chunk import _restarted_initial_state, ssd_chunked  # noqa: E402
from ssm_offset.ops.ssd.naive import discretize_dt, heads_to_groups  # noqa: E402
from ssm_offset.ops.ssd.op import ssd_bwd_reference  # noqa: E402
from ssm_offset.ops.ssd import scan_kernel  # noqa: E402
from ssm_offset.ops.ssd.scan_kernel import chunk_scan  # noqa: E402
from closeness import check  # noqa: E402

BATCH, HEADS = 2, 4
BASE = dict(length=40, chunk=16, P=8, N=16, groups=2, dtype="float32", D=None, z=False, initial_state=None,
            state_offset=None, y_offset=None, seq=False, dt_limit=False)
KERNEL_CASES = [
    dict(),
    dict(D="h", z=True, state_offset="shared", y_offset="row"),
    dict(chunk=32, P=16, N=8, groups=1, length=70, D="hp", state_offset="row", y_offset="shared"),
    dict(initial_state="row", state_offset="shared", seq=True, z=True, D="h"),
    dict(initial_state="shared", state_offset="row", y_offset="row", seq=True, groups=1, chunk=32, P=32, N=16),
    dict(seq=True, z=True, y_offset="shared", dt_limit=True),
    dict(N=136, P=16, length=33, state_offset="shared", initial_state="row", D="h"),  # two N tiles
    dict(dtype="float16", D="h", z=True, state_offset="shared", y_offset="row", initial_state="row"),
    dict(dtype="float16", chunk=32, P=16, groups=1, length=70, state_offset="row", seq=True, initial_state="shared"),
]
# bf16 runs only where the interpreter multiplies bf16 tiles right (Triton 3.9's does not: it returns ~1e10)
BF16_CASES = [{**case, "dtype": "bfloat16"} for case in KERNEL_CASES[-2:]]
PIPELINE_CASES = [
    dict(D="h", z=True, initial_state="row", state_offset="shared", y_offset="row", seq=True),
    dict(chunk=32, P=16, N=8, groups=1, length=70, D="hp", initial_state="shared", state_offset="row"),
    dict(z=True, dt_limit=True, state_offset="row", y_offset="shared"),
]


def case_id(kind, case):
    return kind + ":" + ",".join(f"{k}={v}" for k, v in case.items())


def inputs(case, seed):
    gen = torch.Generator().manual_seed(seed)
    L, P, N, G = case["length"], case["P"], case["N"], case["groups"]
    dtype = getattr(torch, case["dtype"])

    def rnd(*shape, scale=1.0, uniform=False, dtype=torch.float32):
        return ((torch.rand if uniform else torch.randn)(*shape, generator=gen) * scale).to(dtype)

    def adapter(kind, *shape):
        return None if kind is None else rnd(*(((BATCH,) if kind == "row" else ()) + shape), scale=0.5)

    seq = None
    if case["seq"]:  # documents cut inside chunks and at a chunk start; row 1 one document
        seq = torch.zeros(BATCH, L, dtype=torch.long)
        for cut in (5, case["chunk"], case["chunk"] + 3):
            seq[0, cut:] += 1
        seq[1] += 7
    return dict(
        x=rnd(BATCH, L, HEADS, P, dtype=dtype), dt=rnd(BATCH, L, HEADS, scale=2.0, uniform=True, dtype=dtype) - 1,
        A=-(rnd(HEADS, uniform=True) + 0.2), B=rnd(BATCH, L, G, N, scale=N ** -0.5 * 2, dtype=dtype),
        C=rnd(BATCH, L, G, N, scale=N ** -0.5 * 2, dtype=dtype),
        D={None: None, "h": rnd(HEADS), "hp": rnd(HEADS, P)}[case["D"]],
        z=rnd(BATCH, L, HEADS, P, dtype=dtype) if case["z"] else None, dt_bias=rnd(HEADS, scale=0.5),
        initial_state=adapter(case["initial_state"], HEADS, P, N),
        state_offset=adapter(case["state_offset"], HEADS, P, N),
        y_offset=adapter(case["y_offset"], HEADS, P),
    ), seq


def limits(case):
    return (0.01, 2.0) if case["dt_limit"] else (0.0, float("inf"))


def reference(t, seq, case, z=True):
    d = {k: None if v is None else v.double() for k, v in t.items()}
    return ssd_chunked(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"], d["z"] if z else None, d["dt_bias"], True,
                       limits(case), d["initial_state"], d["state_offset"], d["y_offset"], case["chunk"], seq)


def stages(t, seq, case):
    """What mamba_ssm's first stages hand the kernel, in float64 from their definitions: Δ and the within-chunk
    cumsum of Δ·A (batch, H, nchunks, Q), C·Bᵀ per chunk zeroed across documents, the state entering each chunk
    (every document after the first restarts from zero, as mamba_ssm's seq_idx does), and our restart term."""
    x, B, C = t["x"].double(), t["B"].double(), t["C"].double()
    batch, length, nheads, _ = x.shape
    q = case["chunk"]
    nchunks = -(-length // q)
    pad = nchunks * q - length
    delta = discretize_dt(t["dt"].double(), t["dt_bias"].double(), True, limits(case))
    a = delta * t["A"].double()
    docs = torch.zeros(batch, length, dtype=torch.long) if seq is None else seq - seq[:, :1]

    def chunked(v):  # (b, L, h) → (b, h, nchunks, Q), padded with zeros
        return F.pad(v, (0, 0, 0, pad)).view(batch, nchunks, q, nheads).permute(0, 3, 1, 2)

    dA_cumsum = chunked(a).cumsum(-1)
    cb = torch.einsum("bign,bjgn->bgij", F.pad(C, (0, 0, 0, 0, 0, pad)), F.pad(B, (0, 0, 0, 0, 0, pad)))
    seg = F.pad(docs, (0, pad), value=-1)
    cb = cb * (seg[:, :, None] == seg[:, None, :])[:, None]
    cb = torch.stack([cb[:, :, c * q:(c + 1) * q, c * q:(c + 1) * q] for c in range(nchunks)], dim=1)
    h0 = t["initial_state"]
    Bh, start = heads_to_groups(B, nheads), torch.zeros(batch, *t["x"].shape[2:], B.shape[-1], dtype=torch.float64)
    h = start + (0 if h0 is None else h0.double())
    entering = []
    for s in range(length):
        if s % q == 0:
            entering.append(h)
        if s > 0:
            h = torch.where((docs[:, s] != docs[:, s - 1])[:, None, None, None], start, h)
        h = a[:, s, :, None, None].exp() * h + (delta[:, s, :, None] * x[:, s])[..., None] * Bh[:, s, :, None, :]
    extra = None
    if seq is not None and h0 is not None:
        extra, _ = _restarted_initial_state(seq, a, h0.double(), heads_to_groups(C, nheads), start)
    return cb, chunked(delta), dA_cumsum, torch.stack(entering, dim=1), extra, docs


def closeness(name, got, want, dtype, failures):
    problem = check(name, got, want, dtype)
    if problem:
        failures.append(problem)


def kernel_case(case, seed):
    t, seq = inputs(case, seed)
    dtype = t["x"].dtype
    cb, delta, dA_cumsum, entering, extra, docs = stages(t, seq, case)
    args = (cb.float(), t["x"], delta.float(), dA_cumsum.float(), t["C"], entering.to(dtype))
    kw = dict(D=t["D"], state_offset=t["state_offset"], y_offset=t["y_offset"],
              extra=None if extra is None else extra.float(), seq_idx=None if seq is None else docs)
    failures = []
    want, _ = reference(t, seq, case)
    closeness("y", chunk_scan(*args, z=t["z"], **kw), want, dtype, failures)
    if t["z"] is not None:
        dout = torch.randn(t["x"].shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
        dy_pre, dz = chunk_scan(*args, z=t["z"], dout=dout, **kw)
        s, _ = reference(t, seq, case, z=False)
        zz, do = t["z"].double(), dout.double()
        sig = torch.sigmoid(zz)
        closeness("dy_pre", dy_pre, do * zz * sig, dtype, failures)
        closeness("dz", dz, do * s * sig * (1 + zz * (1 - sig)), dtype, failures)
    return failures


def pipeline_case(case, seed):
    t, seq = inputs(case, seed)
    args = (*t.values(), True, *limits(case), case["chunk"], seq)
    y, final, *stages = ssd_kernel.ssd_fwd_cuda(*args)
    want, want_final = reference(t, seq, case)
    failures = []
    closeness("y", y, want, torch.float32, failures)
    closeness("final_state", final, want_final, torch.float32, failures)
    fake = ssd_kernel.empty_stages(t["x"], t["B"], case["chunk"], fast=True)
    for name, got, expected in zip(ssd_kernel.STAGES, stages, fake):
        if got.shape != expected.shape or got.dtype != expected.dtype:
            failures.append(f"stage {name}: {tuple(got.shape)} {got.dtype}, the fake says {tuple(expected.shape)} "
                            f"{expected.dtype}")
    g = torch.Generator().manual_seed(seed + 1)
    dy, dfinal = torch.randn(y.shape, generator=g), torch.randn(final.shape, generator=g)
    d = [v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in args]
    ref = ssd_bwd_reference(dy.double(), dfinal.double(), *d)
    # from the forward's stages, and (the backward called without them) from the stages run again
    for how, extra in (("", stages), (" without stages", [])):
        got = ssd_kernel.ssd_bwd_cuda(dy, dfinal, *args, *extra)
        for name, a, r, v in zip(t, got, ref, t.values()):
            if v is not None:
                closeness(f"d{name}{how}", a, r, torch.float32, failures)
    return failures


def interpreter_bf16_dot_error():
    """Max error of a 16×16 bf16 tl.dot under the interpreter against torch."""
    import triton
    import triton.language as tl

    @triton.jit
    def product(a_ptr, b_ptr, out_ptr, M: tl.constexpr):
        tile = tl.arange(0, M)[:, None] * M + tl.arange(0, M)[None, :]
        tl.store(out_ptr + tile, tl.dot(tl.load(a_ptr + tile), tl.load(b_ptr + tile)))

    a, b = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    out = torch.empty(16, 16)
    product[(1,)](a, b, out, M=16)
    return (out - a.float() @ b.float()).abs().max().item()


def main(out):
    ssd_kernel.limit_autotuning(1)  # autotuning would time configs with CUDA events
    results = {}
    tuner = scan_kernel._chunk_scan_kernel
    # the smallest tiles (several per chunk and head) and the largest first config (tiles overhanging the chunk)
    for config in (scan_kernel.CONFIGS[-1], scan_kernel.CONFIGS[0]):
        tuner.configs = [config]
        tiles = "x".join(str(v) for v in config.kwargs.values())
        for i, case in enumerate(KERNEL_CASES):
            results[case_id("kernel", {**case, "tiles": tiles})] = kernel_case({**BASE, **case}, seed=100 + i)
    tuner.configs = [scan_kernel.CONFIGS[-1]]
    err = interpreter_bf16_dot_error()
    if err < 1e-3:
        for i, case in enumerate(BF16_CASES):
            results[case_id("kernel-bf16", case)] = kernel_case({**BASE, **case}, seed=150 + i)
    else:
        results["kernel-bf16"] = f"skip: this Triton's interpreter gets bf16 tl.dot wrong (max err {err:.3g} on 16x16)"
    if ssd_kernel.available():
        # mamba_ssm's launchers select the tensor's CUDA device and read its SM count, neither of which a CPU
        # tensor has; in this process only, those two calls answer for a CPU
        torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
        torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(multi_processor_count=4)
        for i, case in enumerate(PIPELINE_CASES):
            results[case_id("pipeline", case)] = pipeline_case({**BASE, **case}, seed=200 + i)
    else:
        results["pipeline"] = f"skip: {ssd_kernel._error}"
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
