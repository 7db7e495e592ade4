"""The scan references against plain scalar loops (float64), their faces against each other, autograd,
torch.compile, and shape errors."""
import math

import pytest
import torch

from ssm_offset.ops import ScanShapeError, selective_scan, selective_scan_step, ssd_scan, ssd_step
from ssm_offset.ops.selective_scan import selective_scan_naive
from ssm_offset.ops.ssd import ssd_chunked, ssd_naive

f64 = torch.float64


def softplus(v):
    return math.log1p(math.exp(v)) if v < 30 else v


def s6_inputs(b, d, l, n, groups, gen, per_row=False, dtype=f64):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    bc_shape = (b, n, l) if groups is None else (b, groups, n, l)
    lead = (b,) if per_row else ()
    return dict(
        u=r(b, d, l), delta=r(b, d, l) * 0.5, A=-(torch.rand(d, n, generator=gen, dtype=dtype) * 2 + 0.1),
        B=r(*bc_shape), C=r(*bc_shape), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.1,
        initial_state=r(*lead, d, n), state_offset=r(*lead, d, n), y_offset=r(*lead, d),
    )


def s6_scalar_loop(u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset, y_offset):
    """The recurrence written one scalar at a time, independent of every tensor formulation."""
    b_, d_, l_ = u.shape
    n_ = A.shape[1]
    y = torch.zeros(b_, d_, l_, dtype=f64)
    final = torch.zeros(b_, d_, n_, dtype=f64)
    row = lambda t, b: t if t.dim() == 2 or (t.dim() == 1) else t[b]  # noqa: E731
    for b in range(b_):
        for d in range(d_):
            g = 0 if B.dim() == 3 else d // (d_ // B.shape[1])
            Bv = B[b] if B.dim() == 3 else B[b, g]
            Cv = C[b] if C.dim() == 3 else C[b, g]
            h = [float(row(initial_state, b)[d, n]) for n in range(n_)]
            for t in range(l_):
                dt = softplus(float(delta[b, d, t] + delta_bias[d]))
                acc = 0.0
                for n in range(n_):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(Bv[n, t]) * float(u[b, d, t])
                    acc += float(Cv[n, t]) * (h[n] + float(row(state_offset, b)[d, n]))
                yo = float(y_offset[d]) if y_offset.dim() == 1 else float(y_offset[b, d])
                v = acc + float(D[d]) * float(u[b, d, t]) + yo
                zz = float(z[b, d, t])
                y[b, d, t] = v * zz / (1 + math.exp(-zz))
            final[b, d] = torch.tensor(h, dtype=f64)
    return y, final


@pytest.mark.parametrize("b,d,l,n,groups,per_row", [
    (1, 2, 1, 3, None, False), (2, 4, 7, 2, None, True), (2, 4, 13, 3, 2, False), (1, 6, 33, 1, 3, True),
])
def test_selective_scan_matches_scalar_loop(b, d, l, n, groups, per_row):
    x = s6_inputs(b, d, l, n, groups, torch.Generator().manual_seed(l), per_row)
    y, final = selective_scan(**x, delta_softplus=True, return_final_state=True)
    y_ref, final_ref = s6_scalar_loop(**x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def ssd_inputs(b, l, h, p, g, n, gen, per_row=False, dtype=f64):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    lead = (b,) if per_row else ()
    return dict(
        x=r(b, l, h, p), dt=r(b, l, h), A=-(torch.rand(h, generator=gen, dtype=dtype) * 2 + 0.1),
        B=r(b, l, g, n), C=r(b, l, g, n), D=r(h), z=r(b, l, h, p), dt_bias=r(h) * 0.1,
        initial_state=r(*lead, h, p, n), state_offset=r(*lead, h, p, n), y_offset=r(*lead, h, p),
    )


def ssd_scalar_loop(x, dt, A, B, C, D, z, dt_bias, initial_state, state_offset, y_offset):
    b_, l_, h_, p_ = x.shape
    g_, n_ = B.shape[2:]
    y = torch.zeros_like(x)
    final = torch.zeros(b_, h_, p_, n_, dtype=f64)
    row = lambda t, b, nd: t if t.dim() == nd else t[b]  # noqa: E731
    for b in range(b_):
        for hh in range(h_):
            g = hh // (h_ // g_)
            for p in range(p_):
                s = [float(row(initial_state, b, 3)[hh, p, n]) for n in range(n_)]
                for t in range(l_):
                    d = softplus(float(dt[b, t, hh] + dt_bias[hh]))
                    acc = 0.0
                    for n in range(n_):
                        s[n] = math.exp(d * float(A[hh])) * s[n] + d * float(x[b, t, hh, p]) * float(B[b, t, g, n])
                        acc += (s[n] + float(row(state_offset, b, 3)[hh, p, n])) * float(C[b, t, g, n])
                    v = acc + float(D[hh]) * float(x[b, t, hh, p]) + float(row(y_offset, b, 2)[hh, p])
                    zz = float(z[b, t, hh, p])
                    y[b, t, hh, p] = v * zz / (1 + math.exp(-zz))
                final[b, hh, p] = torch.tensor(s, dtype=f64)
    return y, final


@pytest.mark.parametrize("b,l,h,p,g,n,chunk,per_row", [
    (1, 1, 2, 2, 1, 3, 4, False), (2, 7, 4, 2, 2, 3, 4, True), (1, 19, 2, 3, 1, 2, 8, False), (2, 16, 2, 2, 2, 2, 16, True),
])
def test_ssd_matches_scalar_loop(b, l, h, p, g, n, chunk, per_row):
    x = ssd_inputs(b, l, h, p, g, n, torch.Generator().manual_seed(l), per_row)
    y, final = ssd_scan(**x, dt_softplus=True, chunk_size=chunk, return_final_state=True)
    y_ref, final_ref = ssd_scalar_loop(**x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 5, 64, 100])
def test_ssd_chunked_equals_sequential_for_every_chunk_size(length):
    x = ssd_inputs(2, length, 4, 3, 2, 5, torch.Generator().manual_seed(0), per_row=True)
    y0, f0 = ssd_naive(**x, dt_softplus=True, dt_limit=(0.0, 0.5))
    for chunk in (1, 3, 16, 64, 256):
        y1, f1 = ssd_chunked(**x, dt_softplus=True, dt_limit=(0.0, 0.5), chunk_size=chunk)
        torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(f1, f0, rtol=1e-10, atol=1e-10)


def test_selective_scan_step_equals_scan():
    x = s6_inputs(2, 4, 9, 3, 2, torch.Generator().manual_seed(3), per_row=True)
    y, final = selective_scan(**x, delta_softplus=True, return_final_state=True)
    state = x["initial_state"].clone()
    for t in range(9):
        yt, state = selective_scan_step(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t], x["D"], x["z"][..., t],
            x["delta_bias"], True, x["state_offset"], x["y_offset"],
        )
        torch.testing.assert_close(yt, y[..., t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


def test_ssd_step_equals_scan():
    x = ssd_inputs(2, 9, 4, 3, 2, 5, torch.Generator().manual_seed(4), per_row=True)
    y, final = ssd_scan(**x, dt_softplus=True, chunk_size=4, return_final_state=True)
    state = x["initial_state"].clone()
    for t in range(9):
        yt, state = ssd_step(
            state, x["x"][:, t], x["dt"][:, t], x["A"], x["B"][:, t], x["C"][:, t], x["D"], x["z"][:, t],
            x["dt_bias"], True, (0.0, math.inf), x["state_offset"], x["y_offset"],
        )
        torch.testing.assert_close(yt, y[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-12, atol=1e-12)


def test_final_state_continues_the_scan():
    """Scanning a prefix and continuing from its final state equals one scan: the property prefill relies on."""
    x = s6_inputs(2, 4, 12, 3, None, torch.Generator().manual_seed(5), per_row=True)
    y, final = selective_scan(**x, delta_softplus=True, return_final_state=True)
    cut = lambda sl: {k: (v[..., sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}  # noqa: E731
    y1, f1 = selective_scan(**cut(slice(0, 5)), delta_softplus=True, return_final_state=True)
    second = cut(slice(5, 12))
    second["initial_state"] = f1
    y2, f2 = selective_scan(**second, delta_softplus=True, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f2, final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_row", [False, True])
def test_selective_scan_gradcheck(per_row):
    x = s6_inputs(2, 3, 5, 2, None, torch.Generator().manual_seed(6), per_row)
    names = list(x)
    leaves = [x[k].requires_grad_() for k in names]

    def f(*t):
        y, s = selective_scan(**dict(zip(names, t)), delta_softplus=True, return_final_state=True)
        return y, s

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("per_row", [False, True])
def test_ssd_gradcheck(per_row):
    x = ssd_inputs(2, 6, 2, 2, 1, 2, torch.Generator().manual_seed(7), per_row)
    names = list(x)
    leaves = [x[k].requires_grad_() for k in names]

    def f(*t):
        return ssd_scan(**dict(zip(names, t)), dt_softplus=True, chunk_size=4, return_final_state=True)

    assert torch.autograd.gradcheck(f, leaves)


def test_ops_compile_fullgraph_forward_and_backward():
    gen = torch.Generator().manual_seed(8)
    x = s6_inputs(2, 4, 8, 3, None, gen, dtype=torch.float32)
    s = ssd_inputs(2, 8, 2, 3, 1, 4, gen, dtype=torch.float32)

    def loss(x, s):
        a = selective_scan(**x, delta_softplus=True)
        b = ssd_scan(**s, dt_softplus=True, chunk_size=4)
        return a.square().mean() + b.square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (loss, compiled):
        leaves = {k: v.clone().requires_grad_() for k, v in {**x, **{"s_" + k: v for k, v in s.items()}}.items()}
        xx = {k: v for k, v in leaves.items() if not k.startswith("s_")}
        ss = {k[2:]: v for k, v in leaves.items() if k.startswith("s_")}
        out = fn(xx, ss)
        out.backward()
        grads.append((out.detach(), [v.grad for v in leaves.values()]))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b)
    assert grads[0][1][list(x).index("state_offset")].abs().sum() > 0


def mixer_views(x):
    """The same values, with delta, z, B and C (one group) as transposed views of projection outputs (batch, L, ·),
    time-major, which the scan takes without copies (the Mamba-1 mixer hands B and C over so). Also used by
    tests/test_cuda_selective_scan.py."""
    d, n = x["u"].shape[1], x["B"].shape[-2]
    x = dict(x)
    x["delta"] = x["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    xz = torch.cat([x["u"], x["z"]], 1).transpose(1, 2).contiguous()  # (b, l, 2d), as in_proj writes it
    x["z"] = xz.transpose(1, 2)[:, d:]
    bc = torch.cat([x["B"], x["C"]], 1).transpose(1, 2).contiguous()  # (b, l, 2n), as x_proj writes it
    x["B"], x["C"] = bc.transpose(1, 2).split([n, n], 1)
    return x


def test_forward_op_returns_the_state_at_every_chunk_start():
    """The forward op's third output (what the time-parallel backward starts its chunks from): chunk k's entry is the
    state a scan of the first k·STATES_EVERY steps ends on, a document start at a chunk's first step included."""
    from ssm_offset.ops.selective_scan.op import STATES_EVERY

    every = STATES_EVERY
    x = s6_inputs(2, 3, 2 * every + 5, 4, None, torch.Generator().manual_seed(12))
    seq = torch.zeros(2, 2 * every + 5, dtype=torch.long)
    seq[0, every:] = 1
    seq[0, every + 3:] = 2
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    for s in (None, seq):
        _, _, states = torch.ops.ssm_offset.selective_scan_fwd(
            *(x[k] for k in names), True, x["initial_state"], x["state_offset"], x["y_offset"], s)
        assert states.shape == (2, 3, 3, 4) and states.dtype == f64
        torch.testing.assert_close(states[:, :, 0], x["initial_state"].expand(2, 3, 4))
        for k in (1, 2):
            cut = k * every
            prefix = {n: (v[..., :cut] if v.dim() == 3 else v) for n, v in x.items()}  # u, delta, z, B, C: over L
            _, want = selective_scan_naive(**prefix, delta_softplus=True, seq_idx=None if s is None else s[:, :cut])
            torch.testing.assert_close(states[:, :, k], want)


def _time_major_inputs(b, d, l, n, gen):
    return mixer_views(s6_inputs(b, d, l, n, None, gen, dtype=torch.float32))


def test_scan_outputs_follow_time_major_inputs():
    x = _time_major_inputs(2, 6, 9, 3, torch.Generator().manual_seed(10))
    contiguous = {k: v.contiguous() for k, v in x.items()}
    y = selective_scan(**x, delta_softplus=True)
    assert y.stride(1) == 1 and y.transpose(1, 2).is_contiguous(), y.stride()  # like delta: out_proj reads it as is
    torch.testing.assert_close(y, selective_scan(**contiguous, delta_softplus=True))
    assert selective_scan(**contiguous, delta_softplus=True).is_contiguous()
    dy = torch.randn(y.shape).transpose(1, 2).contiguous().transpose(1, 2)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    grads = torch.ops.ssm_offset.selective_scan_bwd(dy, None, *args, True, None, None, None)
    du, ddelta, dz = grads[0], grads[1], grads[6]
    assert du.is_contiguous() and ddelta.transpose(1, 2).is_contiguous() and dz.transpose(1, 2).is_contiguous()


def test_compiled_scan_on_time_major_views_matches_eager():
    x = _time_major_inputs(2, 6, 9, 3, torch.Generator().manual_seed(11))

    def loss(x):
        return selective_scan(**x, delta_softplus=True).square().mean()

    compiled = torch.compile(loss, fullgraph=True)
    runs = []
    for fn in (loss, compiled):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        out = fn({k: v for k, v in leaves.items()})
        out.backward()
        runs.append((out.detach(), {k: v.grad for k, v in leaves.items()}))
    torch.testing.assert_close(runs[1][0], runs[0][0])
    for k in x:
        torch.testing.assert_close(runs[1][1][k], runs[0][1][k], msg=k)


def test_kernel_layouts_pass_mixer_views_through_and_convert_the_rest():
    """What the CUDA binding is handed (ops.kernels._laid_out): the mixer's time-major views and contiguous tensors
    go through as they are (no copy), a tensor laid out the other way is copied into the layout asked for."""
    from ssm_offset.ops._common import time_major
    from ssm_offset.ops.kernels import _laid_out

    x = _time_major_inputs(2, 6, 9, 3, torch.Generator().manual_seed(12))
    delta, z, B = x["delta"], x["z"], x["B"].unsqueeze(1)  # B as the kernels take it: (batch, groups, N, L)
    assert time_major(delta) and time_major(z) and not time_major(x["u"])
    for t in (delta, z, B):
        assert _laid_out(t, True).data_ptr() == t.data_ptr()
    assert _laid_out(x["u"], False).data_ptr() == x["u"].data_ptr()
    for t, tm in ((x["u"], True), (delta, False), (z, False), (B, False)):
        out = _laid_out(t, tm)
        assert out.data_ptr() != t.data_ptr() and torch.equal(out, t)
        inner = out.dim() - 2 if tm else out.dim() - 1
        assert out.stride(inner) == 1, (tm, out.stride())
    assert _laid_out(None, True) is None


def test_bf16_inputs_accumulate_in_fp32():
    x = s6_inputs(1, 4, 16, 4, None, torch.Generator().manual_seed(9), dtype=torch.float32)
    y32, f32 = selective_scan(**x, delta_softplus=True, return_final_state=True)
    xb = {k: v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    yb, fb = selective_scan(**xb, delta_softplus=True, return_final_state=True)
    assert yb.dtype == torch.bfloat16 and fb.dtype == torch.float32
    assert (yb.float() - y32).norm() / y32.norm() < 2e-2


def test_shape_errors_name_the_tensor():
    x = s6_inputs(2, 4, 5, 3, None, torch.Generator().manual_seed(10))
    bad = dict(x, state_offset=torch.zeros(4, 2))
    with pytest.raises(ScanShapeError, match=r"state_offset: got shape \(4, 2\), expected \(4, 3\) or \(2, 4, 3\)"):
        selective_scan(**bad)
    with pytest.raises(ValueError, match="3 groups do not divide the 4 channels"):
        selective_scan(**dict(x, B=torch.zeros(2, 3, 3, 5), C=torch.zeros(2, 3, 3, 5)))
    s = ssd_inputs(2, 5, 4, 2, 2, 3, torch.Generator().manual_seed(11))
    with pytest.raises(ScanShapeError, match=r"initial_state: got shape \(3, 2, 3\)"):
        ssd_scan(**dict(s, initial_state=torch.zeros(3, 2, 3)))
    with pytest.raises(ScanShapeError, match=r"y_offset"):
        ssd_scan(**dict(s, y_offset=torch.zeros(8)))


def _opcheck_inputs(op):
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape, positive=False):
        t = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
        return t.requires_grad_(True)

    if op == "selective_scan_fwd":
        b, d, length, n = 2, 3, 40, 4
        seq = torch.tensor([[0] * 15 + [1] * 25, [0] * 40])
        return (rnd(b, d, length), rnd(b, d, length, positive=True), -rnd(d, n, positive=True).detach().requires_grad_(),
                rnd(b, 1, n, length), rnd(b, 1, n, length), rnd(d), rnd(b, d, length), rnd(d), True, rnd(d, n),
                rnd(b, d, n), rnd(d), seq)
    b, length, h, p, n = 1, 48, 2, 4, 8
    return (rnd(b, length, h, p), rnd(b, length, h, positive=True), -rnd(h, positive=True).detach().requires_grad_(),
            rnd(b, length, 1, n), rnd(b, length, 1, n), rnd(h), None, rnd(h), rnd(h, p, n), rnd(b, h, p, n), rnd(h, p),
            True, 0.0, math.inf, 16)


@pytest.mark.parametrize("op", ["selective_scan_fwd", "ssd_fwd"])
def test_scan_ops_pass_torch_library_opcheck(op):
    """The ops as torch.library.opcheck sees them: schema, the Autograd kernel registered by
    _common.define_autograd (no custom_op wrapper), the fake implementation against the real one, and AOT dispatch
    with dynamic shapes, i.e. what torch.compile relies on. The Mamba-1 case passes seq_idx; the SSD one leaves its
    trailing default out, which the Autograd kernel must fill back in."""
    result = torch.library.opcheck(getattr(torch.ops.ssm_offset, op).default, _opcheck_inputs(op))
    assert set(result) == {"test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"}
    assert all(v == "SUCCESS" for v in result.values()), result


def test_scan_op_without_grad_records_no_graph():
    """Where no input requires grad (or grad is off), the Autograd kernel redispatches without the Function, so
    inference builds no autograd graph."""
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _opcheck_inputs("selective_scan_fwd")]
    y, final, states = torch.ops.ssm_offset.selective_scan_fwd(*args)
    assert y.grad_fn is None and not y.requires_grad
    leaf = _opcheck_inputs("selective_scan_fwd")
    with torch.no_grad():
        y, _, _ = torch.ops.ssm_offset.selective_scan_fwd(*leaf)
    assert y.grad_fn is None
    y, _, states = torch.ops.ssm_offset.selective_scan_fwd(*leaf)
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "selective_scan_fwdBackward"
    assert not states.requires_grad  # the saved chunk states are marked non-differentiable
