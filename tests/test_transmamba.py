"""TransMamba: the two limits (P = 0 is Mamba-2, P >= T is attention written out by hand), the Memory Converter
against a hand-written recurrence, decoding against the parallel forward, ragged batches, save/load, configs,
schedules, and gradients."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_offset.models import (
    ConfigError, Mamba2Config, Mamba2ForCausalLM, TransMambaCache, TransMambaConfig, TransMambaForCausalLM,
    config_from_hf_dict, geometric_transpoints, load_model, model_from_config,
)
from ssm_offset.models.generation import prefill

from tiny_models import spread_weights

VOCAB = 64
# 4 value heads of width 8 over 2 groups of Q/K width 8; chunk 8 so the scans span several chunks
TINY = dict(vocab_size=VOCAB, hidden_size=16, state_size=8, num_hidden_layers=4, num_heads=4, head_dim=8,
            n_groups=2, chunk_size=8, conv_kernel=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only contend (fp64 depthwise conv is ~100x slower with 2 threads
    on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(schedule=(0,), dtype=torch.float64, seed=0, **overrides) -> TransMambaForCausalLM:
    """A tiny TransMamba with weights spread out enough that every path matters; `schedule` for both modes."""
    cfg = TransMambaConfig(**{**TINY, "transpoints_train": list(schedule), "transpoints_infer": list(schedule),
                              **overrides})
    torch.manual_seed(seed)
    return spread_weights(TransMambaForCausalLM(cfg), seed).to(dtype).eval()


def ids(batch=2, length=20, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def hidden(batch=2, length=20, seed=2):
    return torch.randn(batch, length, TINY["hidden_size"], generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def projections(mixer, h):
    """x (b, L, H, P), B, C (b, L, G, N), dt (b, L, H), z (b, L, d), written out without the model's helpers."""
    b, L, _ = h.shape
    d, gn = mixer.intermediate_size, mixer.n_groups * mixer.state_size
    proj = h @ mixer.in_proj.weight.T
    z, xBC, dt = proj[..., :d], proj[..., d : d + d + 2 * gn], proj[..., d + d + 2 * gn :]
    k = mixer.conv1d.weight.shape[-1]
    xBC = F.conv1d(F.pad(xBC.transpose(1, 2), (k - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                   groups=xBC.shape[-1])
    xBC = F.silu(xBC).transpose(1, 2)
    x, B, C = xBC[..., :d], xBC[..., d : d + gn], xBC[..., d + gn :]
    g, n = mixer.n_groups, mixer.state_size
    return (x.reshape(b, L, mixer.num_heads, mixer.head_dim), B.reshape(b, L, g, n), C.reshape(b, L, g, n),
            dt, z)


def group_rmsnorm(mixer, y):
    """Mamba-2's grouped RMSNorm and weight, without the gate (the attention tokens' norm)."""
    g = y.reshape(*y.shape[:-1], mixer.n_groups, -1)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + mixer.norm.eps)
    return mixer.norm.weight * g.reshape(y.shape)


def sequential_state(mixer, x, B, dt, h0=None):
    """h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t B_tᵀ, one token at a time, head h reading group h // (H/G)."""
    b, L, H, P = x.shape
    a = -torch.exp(mixer.A_log.double())  # the mixers form A in at least fp32: fp64 here
    delta = F.softplus(dt + mixer.dt_bias)
    h = torch.zeros(b, H, P, B.shape[-1], dtype=torch.float64) if h0 is None else h0.expand(b, -1, -1, -1).clone()
    for t in range(L):
        for hd in range(H):
            g = hd // (H // mixer.n_groups)
            h[:, hd] = torch.exp(delta[:, t, hd] * a[hd])[:, None, None] * h[:, hd] \
                + delta[:, t, hd][:, None, None] * x[:, t, hd][:, :, None] * B[:, t, g][:, None, :]
    return h


def mamba2_twin(model: TransMambaForCausalLM) -> Mamba2ForCausalLM:
    names = {f.name for f in dataclasses.fields(Mamba2Config)}
    fields = {k: v for k, v in model.config.to_hf_dict().items() if k in names}
    twin = Mamba2ForCausalLM(Mamba2Config(**fields)).to(torch.float64)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


# --- the two limits ---------------------------------------------------------------------------------------

def test_transpoint_zero_is_exactly_mamba2():
    model = tiny(schedule=[0])
    twin = mamba2_twin(model)
    x = ids()
    h0 = torch.randn(4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, twin(x).logits)
        mixer, ref = model.backbone.layers[1].mixer, twin.backbone.layers[1].mixer
        assert torch.equal(mixer(hidden(), initial_state=h0, state_offset=h0), ref(hidden(), initial_state=h0,
                                                                                      state_offset=h0))
        # the cached paths too: a prefill then one-token steps
        ours, theirs = model(x[:, :7], use_cache=True), twin(x[:, :7], use_cache=True)
        steps = [(model(x[:, t : t + 1], cache=ours.cache).logits, twin(x[:, t : t + 1], cache=theirs.cache).logits)
                 for t in range(7, 10)]
    assert torch.equal(ours.logits, theirs.logits)
    assert all(torch.equal(a, b) for a, b in steps)


@pytest.mark.parametrize("beyond", [0, 5])
def test_transpoint_at_or_beyond_length_is_causal_attention_by_hand(beyond):
    model = tiny()
    mixer = model.backbone.layers[0].mixer
    h = hidden(length=13)
    x, B, C, _, _ = projections(mixer, h)
    b, L, H, P = x.shape
    N, per_group = B.shape[-1], H // mixer.n_groups
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    y = torch.empty_like(x)
    for hd in range(H):  # Q = C, K = B of the head's group; V = x of the head
        g = hd // per_group
        scores = (C[:, :, g] @ B[:, :, g].transpose(1, 2)) / math.sqrt(N)
        y[:, :, hd] = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ x[:, :, hd]
    want = group_rmsnorm(mixer, y.reshape(b, L, -1)) @ mixer.out_proj.weight.T
    with torch.no_grad():
        got = mixer(h, transpoint=L + beyond, state_offset=torch.randn(H, P, N, dtype=torch.float64))
    assert (got - want).abs().max().item() <= 1e-10  # and the SSM-path adapter plays no part


# --- the Memory Converter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("with_initial_state", [False, True])
def test_memory_converter_equals_sequential_recurrence(with_initial_state):
    mixer = tiny().backbone.layers[2].mixer
    h0 = torch.randn(4, 8, 8, dtype=torch.float64) if with_initial_state else None
    x, B, _, dt, _ = projections(mixer, hidden(length=19))
    P = 11  # more than one chunk of 8, ragged
    with torch.no_grad():
        got = mixer.memory_converter(B[:, :P], x[:, :P], dt[:, :P], initial_state=h0)
    want = sequential_state(mixer, x[:, :P], B[:, :P], dt[:, :P], h0)
    assert got.shape == want.shape == (2, 4, 8, 8)
    assert (got - want).abs().max().item() <= 1e-10


@pytest.mark.parametrize("P", [1, 8, 11])
def test_ssm_tokens_equal_a_full_mamba2_scan(P):
    """Lossless conversion: from P on, the TransMamba layer's outputs are the Mamba-2 layer's (adapters too)."""
    model = tiny()
    mixer, ref = model.backbone.layers[1].mixer, mamba2_twin(model).backbone.layers[1].mixer
    h = hidden(length=19)
    g = torch.Generator().manual_seed(5)
    adapters = dict(initial_state=torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64),
                    state_offset=torch.randn(4, 8, 8, generator=g, dtype=torch.float64),
                    y_offset=torch.randn(4, 8, generator=g, dtype=torch.float64))
    with torch.no_grad():
        got, want = mixer(h, transpoint=P, **adapters), ref(h, **adapters)
    assert (got[:, P:] - want[:, P:]).abs().max().item() <= 1e-10
    assert (got[:, :P] - want[:, :P]).abs().max().item() > 1e-3  # the attention tokens are not the SSM's


# --- decoding equals the parallel forward -----------------------------------------------------------------

SCHEDULES = {
    "beyond_prompt": [12],     # prompt of 6: attention + KV cache in decoding, crossing P at position 12
    "inside_prompt": [3],      # the prompt is prefilled across P
    "zero": [0],               # pure Mamba-2
    "mixed": [0, 3, 9, 64],    # cycled over 4 layers; 64 is pure attention for these 16 tokens
    "at_split": [6, 8],        # P exactly at the prefill boundary / at the second prefill's boundary
}


@pytest.mark.parametrize("name, rope", [(name, False) for name in SCHEDULES] + [("mixed", True),
                                                                                   ("beyond_prompt", True)])
def test_prefill_and_steps_equal_parallel_forward(name, rope):
    model = tiny(SCHEDULES[name], use_rope=rope)
    T = 16
    x = ids(length=T)
    with torch.no_grad():
        parallel = model(x).logits
        cache = model.new_cache()
        steps = torch.cat([model(x[:, t : t + 1], cache=cache).logits for t in range(T)], dim=1)
        out = model(x[:, :6], use_cache=True)
        parts, cache2 = [out.logits, model(x[:, 6:8], cache=out.cache).logits], out.cache
        parts += [model(x[:, t : t + 1], cache=cache2).logits for t in range(8, T)]
    # the cached SSM state is fp32 (as in Mamba-2), hence not 1e-10
    assert (steps - parallel).abs().max().item() <= 1e-6
    assert (torch.cat(parts, dim=1) - parallel).abs().max().item() <= 1e-6
    assert cache.positions == cache2.positions == [T, T]
    for i, P in enumerate(model.transpoints):
        # past P the KV cache is gone (O(1) memory per token); before it the KV cache holds every token
        assert (cache.key[i] is None) == (P < T)
        assert (cache.ssm[i] is None) == (P >= T)
        if P >= T:
            assert cache.key[i].shape == (2, T, 2, 8) and cache.value[i].shape == (2, T, 4, 8)


def test_rope_changes_only_attention_tokens():
    plain, rope = tiny([64]), tiny([64], use_rope=True)
    x = ids(length=12)
    with torch.no_grad():
        assert (plain(x).logits[:, 1:] - rope(x).logits[:, 1:]).abs().max().item() > 1e-3
        assert torch.equal(tiny([0])(x).logits, tiny([0], use_rope=True)(x).logits)


def test_ragged_batch_decoding_equals_each_row_alone():
    """Rows at different positions cross the TransPoints at different steps of one batched decode."""
    model = tiny([0, 3, 6, 64])
    rows = [ids(1, n, seed=n)[0] for n in (2, 7, 4, 7)]
    follow = ids(4, 6, seed=9)  # tokens fed back during decoding
    with torch.no_grad():
        logits, cache = prefill(model, rows)
        assert isinstance(cache, TransMambaCache) and cache.positions == [2, 7, 4, 7]
        got = [logits] + [model(follow[:, t : t + 1], cache=cache).logits[:, -1] for t in range(6)]
        got = torch.stack(got, dim=1)
        for r, row in enumerate(rows):
            full = torch.cat([row, follow[r]])
            want = model(full[None]).logits[0, len(row) - 1 :]
            assert (got[r] - want).abs().max().item() <= 1e-6, f"row {r}"
    assert cache.key[1] is None and cache.key[2] is None  # every row is past P = 3 and P = 6 now
    # generate uses the same prefill: a ragged batch gives each prompt's own continuation
    prompts = [r.tolist() for r in rows]
    batch = model.generate(prompts, 8, eos_token_id=[])
    for r, p in enumerate(prompts):
        assert torch.equal(batch[r], model.generate([p], 8, eos_token_id=[])[0])
    assert not torch.equal(batch[0], batch[2])


# --- schedules, configs, save/load ------------------------------------------------------------------------

def test_schedules_follow_train_eval_and_explicit_override():
    assert geometric_transpoints(8192) == [0, 128, 256, 512, 1024, 2048, 4096, 8192]
    model = tiny(num_hidden_layers=3, transpoints_train=[0, 4], transpoints_infer=[16])
    assert model.transpoints == [16, 16, 16]  # eval()
    model.train()
    assert model.transpoints == [0, 4, 0]
    model.set_schedule([2, 5, 7, 9])
    assert model.transpoints == [2, 5, 7]
    model.set_schedule(None)
    model.eval()
    x = ids(length=10)
    with torch.no_grad():
        out = model(x[:, :5], use_cache=True)
        model.train()
        with pytest.raises(ValueError, match="layer 0: the cache was filled with TransPoint 16, the model now uses 0"):
            model(x[:, 5:6], cache=out.cache)


def test_save_load_round_trip(tmp_path):
    model = tiny([0, 3, 9, 64], use_rope=True, transpoints_train=[0, 5])
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "transmamba" and cfg["architectures"] == ["TransMambaForCausalLM"]
    assert cfg["transpoints_infer"] == [0, 3, 9, 64] and cfg["transpoints_train"] == [0, 5]
    loaded = TransMambaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.config == model.config and type(model_from_config(loaded.config)) is TransMambaForCausalLM
    x = ids(length=15)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    # the tensors are Mamba-2's, name for name: a Mamba-2 checkpoint's state dict fits a TransMamba model
    assert set(loaded.state_dict()) == set(mamba2_twin(model).state_dict())


def test_bad_configs_name_the_field(tmp_path):
    good = tiny().config.to_hf_dict()
    assert config_from_hf_dict(good) == tiny().config
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['transpoint'\]"):
        config_from_hf_dict({**good, "transpoint": [0, 4]})
    for bad in ["0,128", [], [0, -1], [0, 1.5], [True], 128, None]:
        with pytest.raises(ConfigError, match="transpoints_train: got .*non-empty list of non-negative integers"):
            config_from_hf_dict({**good, "transpoints_train": bad})
    with pytest.raises(ConfigError, match="transpoints_infer"):
        TransMambaForCausalLM(TransMambaConfig(**{**TINY, "transpoints_infer": [4, "8"]}))
    with pytest.raises(ConfigError, match="use_rope: rotary embedding needs an even state_size"):
        config_from_hf_dict({**good, "use_rope": True, "state_size": 7})
    (tmp_path / "config.json").write_text(json.dumps({**good, "transpoints_infer": [0, -8]}))
    with pytest.raises(ConfigError, match=r"config.json: transpoints_infer: got \[0, -8\]"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="schedule: got"):
        tiny().set_schedule([3, -1])
    with pytest.raises(TypeError, match="TransMambaCache"):
        from ssm_offset.models import Cache
        tiny()(ids(), cache=Cache.empty(4))


# --- training ---------------------------------------------------------------------------------------------

def test_gradients_reach_every_parameter_and_training_reduces_loss():
    """Every layer mixes both paths on 12 tokens, so every parameter (z, D, A_log, dt_bias included) is used."""
    model = tiny([0, 4, 9, 7], dtype=torch.float32).train()
    x = ids(4, 12, seed=3)
    loss = model(x, labels=x).loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


def test_peft_on_transmamba_acts_on_the_ssm_path_only():
    """State-offset Tuning reaches TransMamba through its SSM path: tokens before every layer's TransPoint use
    attention only and are untouched; later tokens change; generation equals the parallel forward."""
    from ssm_offset.models import TransMambaConfig, TransMambaForCausalLM
    from ssm_offset.peft import config_for, get_peft_model

    torch.manual_seed(0)
    cfg = TransMambaConfig(vocab_size=64, hidden_size=32, state_size=16, num_hidden_layers=2, num_heads=4, head_dim=16,
                           n_groups=1, chunk_size=8, transpoints_train=[4, 8], transpoints_infer=[4, 8])
    x = torch.randint(0, 64, (2, 12))
    for name in ("state-offset-h", "state-offset-y", "initial-state", "lora-inout", "svf", "bitfit", "prompt"):
        model = get_peft_model(TransMambaForCausalLM(cfg).eval(), config_for(name))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
            adapted = model(x).logits
            with model.disable_adapter():
                base = model(x).logits
            if name.startswith("state-offset"):
                torch.testing.assert_close(adapted[:, :4], base[:, :4], rtol=0, atol=0)
            assert (adapted[:, 4:] - base[:, 4:]).abs().max() > 1e-3, name
            new = model.generate([x[0, :5]], max_new_tokens=8, eos_token_id=[])[0]
            parallel = model(torch.cat([x[0, :5], new])[None]).logits[0, 4:-1].argmax(-1)
        assert parallel.tolist() == new.tolist(), name
