"""The loss computed from the hidden states in slices (models.loss, CausalLM's return_logits=False) against
cross-entropy over the whole logits: values and gradients of every parameter, fp32 / fp64 / bf16 autocast,
ignored targets, several slices, the no-grad path, a hooked head, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssm_offset.models import Mamba2Config, MambaConfig, model_from_config
from ssm_offset.models import loss as loss_module
from ssm_offset.models.loss import linear_cross_entropy

VOCAB = 50


def tiny(kind: str, dtype=torch.float32, tie=False):
    torch.manual_seed(0)
    if kind == "mamba":
        config = MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2,
                             tie_word_embeddings=tie)
    else:
        config = Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, num_heads=4,
                              head_dim=16, n_groups=1, chunk_size=8, tie_word_embeddings=tie)
    return model_from_config(config).to(dtype)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 13), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[2, 7:] = -100  # right padding
    return ids, labels


def loss_and_grads(model, ids, labels, **kw):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=labels, **kw)["loss"]
    (loss * 0.7).backward()  # a non-unit incoming gradient: the backward must scale the stored gradients
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,dtype,tie", [("mamba", torch.float32, False), ("mamba2", torch.float32, True),
                                            ("mamba", torch.float64, True)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_from_hidden_states_equals_the_logits_loss(monkeypatch, kind, dtype, tie, reduction):
    monkeypatch.setattr(loss_module, "LOGITS_PER_SLICE", 7 * VOCAB)  # 39 rows → 6 slices, the last one short
    model = tiny(kind, dtype, tie)
    ids, labels = batch()
    want, want_grads = loss_and_grads(model, ids, labels, loss_reduction=reduction)
    got, got_grads = loss_and_grads(model, ids, labels, loss_reduction=reduction, return_logits=False)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert got.dtype == want.dtype and torch.allclose(got, want, rtol=tol, atol=tol)
    assert want_grads.keys() == got_grads.keys()
    assert tie or "lm_head.weight" in got_grads  # an untied head trains here, and its gradient is compared
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                              atol=tol), name


def test_bf16_autocast_matches_to_bf16_rounding():
    """Under autocast the head runs in bf16 both ways; the gradients differ only by bf16 rounding (the whole-
    logits path rounds the scaled gradient, this one the unscaled one)."""
    model = tiny("mamba")
    ids, labels = batch()
    out = []
    for return_logits in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(loss_and_grads(model, ids, labels, return_logits=return_logits))
    (want, want_grads), (got, got_grads) = out
    assert torch.allclose(got, want, rtol=1e-5)
    for name, g in want_grads.items():
        assert (got_grads[name] - g).abs().max() <= 2e-2 * g.abs().max() + 1e-6, name


def test_no_grad_ignored_rows_and_peft_frozen_head():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    targets = torch.randint(0, 30, (20,), generator=g)
    targets[::3] = -100
    want = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100, reduction="sum")
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, "sum", logits_per_slice=90), want)
    # only the hidden states need a gradient (a frozen head, as under PEFT): the weight gets none
    h = hidden.clone().requires_grad_()
    linear_cross_entropy(h, weight, targets, "mean", logits_per_slice=90).backward()
    h2 = hidden.clone().requires_grad_()
    F.cross_entropy(h2 @ weight.t(), targets, ignore_index=-100).backward()
    assert torch.allclose(h.grad, h2.grad, atol=1e-6) and weight.grad is None
    assert h.grad[::3].abs().sum() == 0  # ignored rows: no gradient
    everything_ignored = torch.full((20,), -100)
    assert torch.isnan(linear_cross_entropy(hidden, weight, everything_ignored)).item()  # as F.cross_entropy


def test_a_hooked_head_goes_through_its_forward():
    """An adapter that hooks (or wraps) the head must act on the loss too: the sliced path steps aside."""
    model = tiny("mamba")
    ids, labels = batch()
    model.lm_head.register_forward_hook(lambda module, args, out: out * 2.0)
    want = model(ids, labels=labels)["loss"]
    got = model(ids, labels=labels, return_logits=False)["loss"]
    assert torch.allclose(got, want, rtol=1e-6)
    plain = tiny("mamba")(ids, labels=labels, return_logits=False)["loss"]
    assert not torch.allclose(got, plain)


def test_output_shape_and_bad_input():
    model = tiny("mamba2")
    ids, labels = batch()
    out = model(ids, labels=labels, return_logits=False)
    assert list(out.keys()) == ["loss"] and out.logits is None
    with pytest.raises(ValueError, match="return_logits=False returns only the loss: pass labels"):
        model(ids, return_logits=False)
    with pytest.raises(ValueError, match="loss_reduction: got 'max'"):
        model(ids, labels=labels, loss_reduction="max")
    with pytest.raises(ValueError, match=r"labels: got shape \(3, 12\), expected \(3, 13\)"):
        model(ids, labels=labels[:, 1:], return_logits=False)
    with pytest.raises(ValueError, match="reduction: got 'none'"):
        linear_cross_entropy(torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long), "none")
    with pytest.raises(ValueError, match=r"targets: got shape \(3,\), expected \(2,\)"):
        linear_cross_entropy(torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_is_the_formula(dtype):
    """RMSNorm takes torch's fused rms_norm where input and weight share an fp32/fp64 dtype (the fp32 residual
    stream); it must stay transformers' formula: fp32 statistics, cast back before the weight."""
    from ssm_offset.models.base import RMSNorm

    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24, generator=g))
    x = (torch.randn(3, 5, 24, generator=g) * 3).to(dtype).requires_grad_()
    xf = x.detach().to(torch.promote_types(dtype, torch.float32)).requires_grad_()
    want = norm.weight.detach() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    got = norm(x)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    assert got.dtype == dtype and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
    if dtype != torch.bfloat16:
        grad = torch.randn(got.shape, generator=g, dtype=dtype)
        (gx,) = torch.autograd.grad(got, x, grad)
        (gw,) = torch.autograd.grad(want, xf, grad)
        assert torch.allclose(gx, gw, rtol=tol * 10, atol=tol * 10)
