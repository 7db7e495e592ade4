"""Document boundaries (`seq_idx`): a packed row computes exactly what its documents give one by one — in the
scans (Mamba-1 and chunked SSD, with the initial state re-applied at every document) and in whole models."""
import pytest
import torch

from ssm_offset.models import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
from ssm_offset.ops import ScanShapeError, selective_scan, ssd_scan
from ssm_offset.ops.ssd import ssd_chunked, ssd_naive
from ssm_offset.peft import InitialStateConfig, StateOffsetConfig, get_peft_model

f64 = torch.float64
LENGTHS = [5, 1, 9, 14]  # one row holding four documents


def seq_idx_for(lengths, batch=1):
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).expand(batch, -1).contiguous()


def spans(lengths):
    start = 0
    for n in lengths:
        yield slice(start, start + n)
        start += n


@pytest.mark.parametrize("init", ["none", "shared", "per_row"])
def test_selective_scan_packed_equals_each_document(init):
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 4, 3, sum(LENGTHS)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    u, delta, B, C, z = r(b, d, L), r(b, d, L), r(b, n, L), r(b, n, L), r(b, d, L)
    A = -(torch.rand(d, n, generator=g, dtype=f64) + 0.1)
    h0 = {"none": None, "shared": r(d, n), "per_row": r(b, d, n)}[init]
    off = r(d, n)
    y, final = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, initial_state=h0, state_offset=off,
                              seq_idx=seq_idx_for(LENGTHS, b), return_final_state=True)
    for sl in spans(LENGTHS):
        yd, fd = selective_scan(u[..., sl], delta[..., sl], A, B[..., sl], C[..., sl], z=z[..., sl], delta_softplus=True,
                                initial_state=h0, state_offset=off, return_final_state=True)
        torch.testing.assert_close(y[..., sl], yd, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, fd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("init", ["none", "shared", "per_row"])
def test_ssd_packed_equals_each_document(chunk, init):
    g = torch.Generator().manual_seed(1)
    b, h, p, gr, n, L = 2, 4, 3, 2, 5, sum(LENGTHS)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    x, dt, B, C = r(b, L, h, p), r(b, L, h), r(b, L, gr, n), r(b, L, gr, n)
    A = -(torch.rand(h, generator=g, dtype=f64) * 2 + 0.1)
    h0 = {"none": None, "shared": r(h, p, n), "per_row": r(b, h, p, n)}[init]
    kw = dict(dt_softplus=True, initial_state=h0, state_offset=r(h, p, n), D=r(h))
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=chunk, seq_idx=seq_idx_for(LENGTHS, b), return_final_state=True, **kw)
    y_naive, f_naive = ssd_naive(x, dt, A, B, C, seq_idx=seq_idx_for(LENGTHS, b), **kw)
    torch.testing.assert_close(y, y_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, f_naive, rtol=1e-12, atol=1e-12)
    for sl in spans(LENGTHS):
        yd, fd = ssd_chunked(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], chunk_size=chunk, **kw)
        torch.testing.assert_close(y[:, sl], yd, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, fd, rtol=1e-12, atol=1e-12)


def test_packed_gradients_match_gradcheck():
    g = torch.Generator().manual_seed(2)
    b, h, p, n, L = 1, 2, 2, 2, 7
    leaves = [torch.randn(*s, generator=g, dtype=f64, requires_grad=True)
              for s in [(b, L, h, p), (b, L, h), (b, L, 1, n), (b, L, 1, n), (h, p, n)]]
    A = -torch.rand(h, dtype=f64) - 0.1
    seq = seq_idx_for([3, 4])
    assert torch.autograd.gradcheck(
        lambda x, dt, B, C, h0: ssd_scan(x, dt, A, B, C, dt_softplus=True, initial_state=h0, chunk_size=2, seq_idx=seq),
        leaves)
    u = torch.randn(1, 3, L, dtype=f64, requires_grad=True)
    h0 = torch.randn(3, 2, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, h0: selective_scan(u, u * 0.5, -torch.ones(3, 2, dtype=f64), torch.ones(1, 2, L, dtype=f64),
                                     torch.ones(1, 2, L, dtype=f64), initial_state=h0, seq_idx=seq), (u, h0))


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("adapter", [None, "initial", "offset"])
def test_packed_model_equals_documents_alone(arch, adapter):
    torch.manual_seed(0)
    if arch == "mamba":
        model = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=32, state_size=8, num_hidden_layers=2))
    else:
        model = Mamba2ForCausalLM(Mamba2Config(vocab_size=50, hidden_size=32, state_size=8, num_hidden_layers=2,
                                               num_heads=4, head_dim=16, n_groups=2, chunk_size=4))
    if adapter is not None:
        model = get_peft_model(model, InitialStateConfig() if adapter == "initial" else StateOffsetConfig())
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_()
    model.eval()
    ids = torch.randint(0, 50, (1, sum(LENGTHS)))
    with torch.no_grad():
        packed = model(ids, seq_idx=seq_idx_for(LENGTHS)).logits
        for sl in spans(LENGTHS):
            torch.testing.assert_close(packed[:, sl], model(ids[:, sl]).logits, rtol=1e-5, atol=1e-5)
        # without seq_idx the documents do see each other
        assert not torch.allclose(model(ids).logits[:, 5:], packed[:, 5:], atol=1e-4)


def test_bad_seq_idx_is_named():
    u = torch.randn(1, 2, 4)
    args = (u, u, -torch.ones(2, 1), torch.ones(1, 1, 4), torch.ones(1, 1, 4))
    with pytest.raises(ScanShapeError, match="seq_idx: must be non-decreasing"):
        selective_scan(*args, seq_idx=torch.tensor([[0, 1, 0, 1]]))
    with pytest.raises(ScanShapeError, match=r"seq_idx: got shape \(1, 3\)"):
        selective_scan(*args, seq_idx=torch.tensor([[0, 1, 1]]))
    with pytest.raises(ScanShapeError, match="seq_idx: got dtype torch.float32"):
        selective_scan(*args, seq_idx=torch.zeros(1, 4))
