"""The CUDA selective-scan kernels against the float64 reference (outputs and autograd gradients).

The grid is pairwise: every pair of values of the parameters below appears together in at least one
case (greedy all-pairs, a fixed case list), and every flag is also run at lengths 2049 and 8192 in
bf16. Inputs are fresh random draws on each run (the seed is in the failure message); the allocator's
free memory is poisoned with NaN before each kernel call so an unwritten output cannot pass.
Tolerances are mamba_ssm's own: fp32 rtol 6e-4 / atol 2e-3, bf16 rtol 3e-2 / atol 5e-2; dA in fp32 at its dA
tolerance (GRAD_TOL).
"""
from __future__ import annotations

import itertools
import os
import random

import pytest
import torch

from ssm_offset.ops import kernels
from ssm_offset.ops.selective_scan import selective_scan, selective_scan_step
from ssm_offset.ops.selective_scan.naive import selective_scan_naive
from ssm_offset.ops.selective_scan.op import STATES_EVERY
from ssm_offset.ops.selective_scan.step import selective_scan_step_reference

from closeness import TOL, ErrorLog, check
from test_scan import mixer_views

pytestmark = pytest.mark.cuda

PARAMS = {
    "length": [1, 7, 64, 1000, 2048, 2049, 8192],
    "nstate": [1, 16, 24, 64, 256],
    "groups": [1, 2],
    "dtype": [torch.float32, torch.bfloat16],
    "z": [False, True],
    "D": [False, True],
    "delta_bias": [False, True],
    "softplus": [False, True],
    "initial_state": [None, "shared", "row"],
    "state_offset": [None, "shared", "row"],
    "y_offset": [None, "shared", "row"],
}


def _pairwise(params, seed=0):
    """Greedy all-pairs cover: a short list of cases in which every pair of values occurs."""
    names = list(params)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(range(len(names)), 2)
        for va in range(len(params[names[a]]))
        for vb in range(len(params[names[b]]))
    }
    rng = random.Random(seed)
    cases = []
    while uncovered:
        # seed each case with an uncovered pair, then fill the rest to cover the most new pairs
        a, va, b, vb = min(uncovered)
        best, best_gain = None, -1
        for _ in range(60):
            pick = [rng.randrange(len(params[n])) for n in names]
            pick[a], pick[b] = va, vb
            gain = sum(
                (i, pick[i], j, pick[j]) in uncovered for i, j in itertools.combinations(range(len(names)), 2)
            )
            if gain > best_gain:
                best, best_gain = pick, gain
        uncovered -= {(i, best[i], j, best[j]) for i, j in itertools.combinations(range(len(names)), 2)}
        cases.append({n: params[n][k] for n, k in zip(names, best)})
    return cases


ALL_ON = dict(z=True, D=True, delta_bias=True, softplus=True, initial_state="row", state_offset="shared", y_offset="row")
CASES = _pairwise(PARAMS) + [
    dict(length=L, nstate=16, groups=2, dtype=torch.bfloat16, **flags)
    for L in (2049, 8192)
    for flags in (ALL_ON, {**ALL_ON, "initial_state": "shared", "state_offset": "row", "y_offset": "shared"})
] + [
    # batch x D >= 16384 selects the 4-states-per-lane layout for N <= 16 (fewer channels use 1 per lane)
    dict(length=L, nstate=16, groups=G, dtype=dt, batch=2, dim=8192, **ALL_ON)
    for L, G, dt in ((300, 1, torch.float32), (70, 2, torch.bfloat16))
]


def _id(case):
    return "-".join(
        f"{k}={v}".replace("torch.", "") for k, v in case.items() if v not in (False, None)
    )


def _poison():
    # fill free allocator blocks with NaN so that an element the kernel never writes shows up
    junk = torch.full((16 << 20,), float("nan"), device="cuda")
    del junk


def _inputs(case, batch=2, dim=8, seed=None):
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    L, N, G, dt = case["length"], case["nstate"], case["groups"], case["dtype"]
    cuda = dict(device="cuda")

    def rnd(*shape, scale=1.0, shift=0.0, uniform=False, dtype=torch.float32):
        x = torch.rand(*shape, generator=gen, **cuda) if uniform else torch.randn(*shape, generator=gen, **cuda)
        return (x * scale + shift).to(dtype)

    def adapter(kind, *shape):
        if kind is None:
            return None
        return rnd(*(((batch,) if kind == "row" else ()) + shape), scale=0.5)

    t = dict(
        u=rnd(batch, dim, L, dtype=dt),
        delta=rnd(batch, dim, L, scale=0.5, uniform=True, dtype=dt) if case["softplus"] is False
        else rnd(batch, dim, L, scale=2.0, shift=-2.0, uniform=True, dtype=dt),
        A=-0.5 * rnd(dim, N, uniform=True) - 0.05,
        B=rnd(batch, G, N, L, dtype=dt) if G > 1 else rnd(batch, N, L, dtype=dt),
        C=rnd(batch, G, N, L, dtype=dt) if G > 1 else rnd(batch, N, L, dtype=dt),
        D=rnd(dim) if case["D"] else None,
        z=rnd(batch, dim, L, dtype=dt) if case["z"] else None,
        delta_bias=rnd(dim, scale=0.5, uniform=True) if case["delta_bias"] else None,
        initial_state=adapter(case["initial_state"], dim, N),
        state_offset=adapter(case["state_offset"], dim, N),
        y_offset=adapter(case["y_offset"], dim),
    )
    return t


ERRORS = ErrorLog()

# dA in fp32 at mamba_ssm's own dA tolerance (its test: rtol max(1e-3, 6e-4), atol 5 x max(1e-3, 2e-3) with z): dA sums
# batch x L products that cancel, so an element's rounding error follows the size of its terms, not of the sum
# (a run here once had one of 2,048 elements 1.3x over the output tolerance, at N = 256). bf16's tolerance is wider.
GRAD_TOL = {("dA", torch.float32): (1e-3, 1e-2)}


def _close(name, got, want, dtype, seed):
    problem = check(name, got, want, dtype, seed, tol=GRAD_TOL.get((name.split(" ")[0], dtype)), log=ERRORS)
    assert problem is None, problem


@pytest.fixture(scope="module", autouse=True)
def _kernels_built():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is false)")
    kernels.build()
    yield
    ERRORS.write(os.environ.get("SSM_OFFSET_ERROR_LOG"))  # the GPU run's record of how close each output came


# Each Mamba-1 kernel family forced through the variables the extension reads at every call (step.cu): the
# channel-parallel kernels, the time-parallel ones, and the state-parallel ones (fp16 / bf16, N = 16, channel-major,
# aligned rows; other calls fall back to the rule).
FAMILIES = {
    "channel-parallel": {"SSM_OFFSET_TIME_PARALLEL": "0", "SSM_OFFSET_STATE_PARALLEL": "0"},
    "time-parallel": {"SSM_OFFSET_TIME_PARALLEL": "1", "SSM_OFFSET_STATE_PARALLEL": "0"},
    "state-parallel": {"SSM_OFFSET_TIME_PARALLEL": None, "SSM_OFFSET_STATE_PARALLEL": "1"},
}


def _family(monkeypatch, name):
    for var, value in FAMILIES[name].items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


@pytest.fixture(params=list(FAMILIES))
def kernel_path(request, monkeypatch):
    _family(monkeypatch, request.param)
    return request.param


def _check_chunk_states(t, kw, seed, label=""):
    """The forward op's third output, the state at every STATES_EVERY-step chunk start that the time-parallel backward
    starts from, against the float64 reference's (both families write it; which one ran is the kernel_path's)."""
    args = lambda d: [d.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]  # noqa: E731
    rest = lambda d: [d.get(k) for k in ("initial_state", "state_offset", "y_offset")]  # noqa: E731
    soft, seq = kw["delta_softplus"], kw.get("seq_idx")
    _poison()
    got = torch.ops.ssm_offset.selective_scan_fwd(*args(t), soft, *rest(t), seq)[2]
    ref = {k: v.double() for k, v in t.items() if v is not None}
    want = selective_scan_naive(*args(ref), soft, *rest(ref), seq, states_every=STATES_EVERY)[2]
    assert got.shape == want.shape, (got.shape, want.shape)
    _close(f"chunk_states{label}", got, want, torch.float32, seed)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_forward_backward_matches_float64_reference(case, kernel_path):
    seed = torch.seed() % (2**31)
    dt = case["dtype"]
    t = _inputs(case, batch=case.get("batch", 2), dim=case.get("dim", 8), seed=seed)
    names = [k for k, v in t.items() if v is not None]
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items() if v is not None}
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in t.items() if v is not None}
    kw = dict(delta_softplus=case["softplus"])

    _poison()
    y, final = selective_scan(**leaves, **kw, return_final_state=True)
    torch.cuda.synchronize()
    y_ref, final_ref = selective_scan_naive(**ref_leaves, **kw)
    _close("y", y, y_ref, dt, seed)
    _close("final_state", final, final_ref, torch.float32, seed)
    _check_chunk_states({k: v for k, v in t.items() if v is not None}, kw, seed)

    dy = torch.randn_like(y)
    dfinal = torch.randn_like(final)
    _poison()
    torch.autograd.backward((y, final), (dy, dfinal))
    torch.autograd.backward((y_ref, final_ref), (dy.double(), dfinal.double()))
    for k in names:
        # gradients of the fp32 parameters are checked at fp32 tolerance only for fp32 inputs: with
        # bf16 inputs they accumulate bf16-rounded products like mamba_ssm's
        _close(f"d{k}", leaves[k].grad, ref_leaves[k].grad.to(leaves[k].grad.dtype), dt, seed)


def _documents(batch, length, seed):
    """(batch, L) non-decreasing document indices: row 0 cut at random places (incl. a one-token document and
    a cut at a backward-chunk boundary when L allows), the last row one document."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.zeros(batch, length, dtype=torch.long)
    if length > 1:
        cuts = set(torch.randint(1, length, (min(6, length - 1),), generator=gen).tolist())
        cuts |= {c for c in (1, 2, 8, 16, 17, 64) if c < length}
        for c in sorted(cuts):
            seq[0, c:] += 1
    for b in range(1, batch - 1):
        seq[b, length // 2:] = 1
    return seq.cuda()


SEQ_CASES = [
    dict(length=L, nstate=N, groups=G, dtype=dt, **flags)
    for L, N, G, dt in ((7, 16, 1, torch.float32), (300, 16, 2, torch.float32), (2049, 64, 1, torch.bfloat16),
                        (129, 256, 1, torch.float32), (1000, 16, 1, torch.bfloat16))
    for flags in (ALL_ON, {**ALL_ON, "initial_state": "shared", "state_offset": None, "y_offset": None},
                  {**ALL_ON, "initial_state": None})
]


@pytest.mark.parametrize("case", SEQ_CASES, ids=[_id(c) for c in SEQ_CASES])
def test_document_boundaries_match_float64_reference(case, kernel_path):
    """Packed rows (seq_idx): each document restarts from the initial state, in the kernel as in the reference;
    gradients flow to the initial state from every document start and never across a boundary."""
    seed = torch.seed() % (2**31)
    dt = case["dtype"]
    batch = 3
    t = _inputs(case, batch=batch, dim=case.get("dim", 8), seed=seed)
    seq = _documents(batch, case["length"], seed)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items() if v is not None}
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in t.items() if v is not None}
    kw = dict(delta_softplus=case["softplus"], seq_idx=seq)
    _poison()
    y, final = selective_scan(**leaves, **kw, return_final_state=True)
    y_ref, final_ref = selective_scan_naive(**ref_leaves, **kw)
    _close("y (seq_idx)", y, y_ref, dt, seed)
    _close("final_state (seq_idx)", final, final_ref, torch.float32, seed)
    _check_chunk_states({k: v for k, v in t.items() if v is not None}, kw, seed, " (seq_idx)")
    dy, dfinal = torch.randn_like(y), torch.randn_like(final)
    _poison()
    torch.autograd.backward((y, final), (dy, dfinal))
    torch.autograd.backward((y_ref, final_ref), (dy.double(), dfinal.double()))
    for k in leaves:
        _close(f"d{k} (seq_idx)", leaves[k].grad, ref_leaves[k].grad.to(leaves[k].grad.dtype), dt, seed)


@pytest.mark.parametrize("fwd_family,bwd_family,dtype,length", [
    ("channel-parallel", "time-parallel", torch.float32, 2049), ("time-parallel", "channel-parallel", torch.float32, 2049),
    ("state-parallel", "time-parallel", torch.bfloat16, 2048), ("state-parallel", "channel-parallel", torch.bfloat16, 2048),
    ("time-parallel", "state-parallel", torch.bfloat16, 2048), ("channel-parallel", "state-parallel", torch.bfloat16, 2048),
])
def test_backward_of_either_family_after_a_forward_of_the_other(fwd_family, bwd_family, dtype, length, monkeypatch):
    """The rules may send a call's forward and backward to different families (the backward is time-parallel at more
    channels than the forward; the state-parallel kernels need aligned 16-bit rows): each backward starts from the
    forward's chunk states, whoever wrote them."""
    seed = torch.seed() % (2**31)
    case = dict(length=length, nstate=16, groups=1, dtype=dtype, **ALL_ON)
    t = _inputs(case, batch=2, dim=8, seed=seed)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items() if v is not None}
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in t.items() if v is not None}
    _family(monkeypatch, fwd_family)
    y, final = selective_scan(**leaves, delta_softplus=True, return_final_state=True)
    _family(monkeypatch, bwd_family)
    dy, dfinal = torch.randn_like(y), torch.randn_like(final)
    _poison()
    torch.autograd.backward((y, final), (dy, dfinal))
    y_ref, final_ref = selective_scan_naive(**ref_leaves, delta_softplus=True)
    torch.autograd.backward((y_ref, final_ref), (dy.double(), dfinal.double()))
    for k in leaves:
        _close(f"d{k} (fwd {fwd_family}, bwd {bwd_family})", leaves[k].grad,
               ref_leaves[k].grad.to(leaves[k].grad.dtype), dtype, seed)


@pytest.mark.parametrize("dtype,layout,state_parallel", [
    (torch.bfloat16, "channel-major", True), (torch.float16, "channel-major", True),
    (torch.float32, "channel-major", False), (torch.bfloat16, "unaligned", False),
])
def test_state_parallel_kernels_run_where_they_can(dtype, layout, state_parallel, monkeypatch):
    """With SSM_OFFSET_STATE_PARALLEL=1 the forward and the backward of a channel-major 16-bit N = 16 call run the
    state-parallel kernels (the profiler names them); fp32, and a B whose rows cannot be read as 16-byte vectors, take
    the rule's family; every one matches the reference, output and gradients. L = 1000 ends mid-chunk and mid-group
    (128, 16 steps) and crosses an interval of the saved states (256), but keeps 16-bit rows 16-byte aligned, as the
    kernels need."""
    from torch.profiler import ProfilerActivity, profile

    _family(monkeypatch, "state-parallel")
    seed = torch.seed() % (2**31)
    length = 1000
    case = dict(length=length, nstate=16, groups=1, dtype=dtype, **ALL_ON)
    t = {k: v for k, v in _inputs(case, batch=2, dim=16, seed=seed).items() if v is not None}
    if layout == "unaligned":  # rows of L + 1 steps, of which the first L: each row starts 2 bytes off the last
        wide = torch.randn(*t["B"].shape[:-1], length + 1, device="cuda", dtype=dtype)
        wide[..., :length] = t["B"]
        t["B"] = wide[..., :length]
    leaves = {k: v.detach().requires_grad_(True) for k, v in t.items()}  # B keeps its unaligned rows
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        y = selective_scan(**leaves, delta_softplus=True)
        dy = torch.randn_like(y)
        y.backward(dy)
        torch.cuda.synchronize()
    for which in ("fwd_kernel", "bwd_kernel"):
        names = [e.key for e in prof.key_averages() if which in e.key]
        assert names and any("::sp::" in k for k in names) == state_parallel, (which, names)
    ref = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
    y_ref = selective_scan_naive(**ref, delta_softplus=True)[0]
    y_ref.backward(dy.double())
    _close(f"y ({layout}, {dtype})", y, y_ref, dtype, seed)
    for k in t:
        _close(f"d{k} ({layout}, {dtype})", leaves[k].grad, ref[k].grad.to(leaves[k].grad.dtype), dtype, seed)


def test_document_boundaries_equal_separate_documents(kernel_path):
    """A row packing two documents gives, on each, what that document gives alone (fp32 kernel vs kernel)."""
    case = dict(length=500, nstate=16, groups=1, dtype=torch.float32, **ALL_ON)
    t = _inputs(case, batch=1, dim=64, seed=7)
    t["initial_state"] = t["initial_state"][0]
    t["state_offset"] = t["state_offset"]
    t["y_offset"] = t["y_offset"][0]
    cut = 213
    seq = torch.zeros(1, 500, dtype=torch.long, device="cuda")
    seq[:, cut:] = 1
    y = selective_scan(**t, delta_softplus=True, seq_idx=seq)
    timed = ("u", "delta", "B", "C", "z")
    parts = [selective_scan(**{k: (v[..., s] if k in timed else v) for k, v in t.items()}, delta_softplus=True)
             for s in (slice(0, cut), slice(cut, 500))]
    torch.testing.assert_close(y, torch.cat(parts, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nstate,groups,per_row", [(16, 1, False), (24, 2, True), (256, 1, True)])
def test_step_matches_reference_and_scan(dtype, nstate, groups, per_row):
    seed = torch.seed() % (2**31)
    case = dict(length=5, nstate=nstate, groups=groups, dtype=dtype, z=True, D=True, delta_bias=True,
                softplus=True, initial_state="row", state_offset="row" if per_row else "shared",
                y_offset="row" if per_row else "shared")
    t = _inputs(case, batch=3, dim=16, seed=seed)
    state = t["initial_state"].clone()
    ys = []
    for i in range(case["length"]):
        step_in = {k: t[k][..., i] for k in ("u", "delta", "B", "C", "z")}
        _poison()
        y, new_state = selective_scan_step(state, **step_in, A=t["A"], D=t["D"], delta_bias=t["delta_bias"],
                                           delta_softplus=True, state_offset=t["state_offset"],
                                           y_offset=t["y_offset"])
        y_ref, state_ref = selective_scan_step_reference(
            state.double(), **{k: v.double() for k, v in step_in.items()}, A=t["A"].double(),
            D=t["D"].double(), delta_bias=t["delta_bias"].double(), delta_softplus=True,
            state_offset=t["state_offset"].double(), y_offset=t["y_offset"].double())
        _close("step y", y, y_ref, dtype, seed)
        _close("step state", new_state, state_ref, torch.float32, seed)
        ys.append(y)
        state = new_state
    # the steps agree with the scan over the same tokens
    y_scan, final = selective_scan(**t, delta_softplus=True, return_final_state=True)
    _close("steps vs scan", torch.stack(ys, -1), y_scan, dtype, seed)
    _close("final state", state, final, torch.float32, seed)


@pytest.mark.parametrize("mixed", [False, True], ids=["mixer", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [7, 1000])
def test_time_major_views_match_contiguous_inputs(length, dtype, mixed, kernel_path):
    """delta, z, B, C and dy as transposed views of (batch, L, ·) projection outputs, as the Mamba-1 mixer hands
    them over: the kernels read and write them in place (no layout copies) and give what contiguous inputs give.
    mixed: z and C contiguous, dy time-major, the rest as the mixer has them (the op lays them out first)."""
    case = dict(length=length, nstate=16, groups=1, dtype=dtype, z=True, D=True, delta_bias=True, softplus=True,
                initial_state="shared", state_offset="row", y_offset="shared")
    t = _inputs(case, batch=2, dim=64, seed=77)
    views = mixer_views(t)
    if mixed:
        views["z"], views["C"] = t["z"], t["C"]
    dy = torch.randn_like(t["u"]).transpose(1, 2).contiguous().transpose(1, 2)
    runs = []
    for inputs in (t, views):
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) if v is not None else None
                  for k, v in inputs.items()}
        y = selective_scan(**leaves, delta_softplus=True)
        grads = torch.autograd.grad(y, [v for v in leaves.values() if v is not None], dy)
        runs.append((y, grads))
    assert runs[1][0].transpose(1, 2).is_contiguous(), runs[1][0].stride()
    # the same arithmetic either way; what may differ is the order of the atomic adds that sum dA, dB, dC, dD and
    # the adapters' gradients over blocks and time segments (fp32: ~1e-4 relative on sums over L=1000, measured
    # against the largest element: an element whose terms cancel keeps their rounding, as dA[38, 10] did once at
    # 1.8e-4 on 0.023); a layout mistake would be off by O(1)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    # y: no atomics, so the channel-parallel kernels give the same bits; the time-parallel ones read channel-major B
    # and C with their own vector loads and time-major ones through a staged tile (two compiled paths, which may
    # contract a multiply-add differently), so there one rounding may differ
    exact = dict(rtol=0, atol=0) if kernel_path == "channel-parallel" else dict(rtol=1e-5, atol=1e-5) \
        if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-2)
    torch.testing.assert_close(runs[1][0], runs[0][0], **exact)
    for a, b in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, b.abs().max().item()))


def test_torch_compile_fullgraph_on_cuda():
    case = dict(length=300, nstate=16, groups=1, dtype=torch.float32, z=True, D=True, delta_bias=True,
                softplus=True, initial_state="shared", state_offset="shared", y_offset="shared")
    t = _inputs(case, seed=1234)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}

    def f(**kw):
        return selective_scan(**kw, delta_softplus=True).float().square().sum()

    eager = f(**leaves)
    eager.backward()
    g_eager = {k: v.grad.clone() for k, v in leaves.items()}
    for v in leaves.values():
        v.grad = None
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(**leaves)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, g_eager[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_mamba_ssm_without_offset(dtype):
    ops = pytest.importorskip("mamba_ssm.ops.selective_scan_interface", reason="mamba_ssm not installed")
    case = dict(length=2049, nstate=16, groups=1, dtype=dtype, z=True, D=True, delta_bias=True, softplus=True,
                initial_state=None, state_offset=None, y_offset=None)
    t = _inputs(case, batch=2, dim=64, seed=torch.seed() % (2**31))
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"])
    ours, ours_last = selective_scan(*args, delta_softplus=True, return_final_state=True)
    theirs, their_last = ops.selective_scan_fn(*args, delta_softplus=True, return_last_state=True)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(ours_last, their_last.float(), rtol=rtol, atol=atol)


# mamba_ssm's own selective-scan test shapes (its tests/ops/test_selective_scan.py: batch 2, dim 4, d_state 8,
# variable B and C, these lengths), every adapter input on, against the fp64 reference
MAMBA_SSM_LENGTHS = [8, 16, 32, 64, 128, 256, 372, 512, 784, 1024, 1134, 2048, 4096]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", MAMBA_SSM_LENGTHS)
def test_mamba_ssm_test_shapes(length, dtype):
    case = dict(length=length, nstate=8, groups=1, dtype=dtype, **ALL_ON)
    seed = torch.seed() % (2**31)
    t = _inputs(case, batch=2, dim=4, seed=seed)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items() if v is not None}
    ref = {k: v.detach().double().requires_grad_(True) for k, v in t.items() if v is not None}
    _poison()
    y, final = selective_scan(**leaves, delta_softplus=True, return_final_state=True)
    y_ref, final_ref = selective_scan_naive(**ref, delta_softplus=True)
    _close("y (mamba_ssm shapes)", y, y_ref, dtype, seed)
    _close("final_state (mamba_ssm shapes)", final, final_ref, torch.float32, seed)
    dy, dfinal = torch.randn_like(y), torch.randn_like(final)
    torch.autograd.backward((y, final), (dy, dfinal))
    torch.autograd.backward((y_ref, final_ref), (dy.double(), dfinal.double()))
    for k in leaves:
        _close(f"d{k} (mamba_ssm shapes)", leaves[k].grad, ref[k].grad.to(leaves[k].grad.dtype), dtype, seed)
