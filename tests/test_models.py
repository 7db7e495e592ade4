"""Models: parity with transformers, the three equivalent paths, generation, both checkpoint formats, bad input."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torch.nn as nn

from tiny_models import spread_weights

from ssm_offset.models import (
    Cache, CheckpointError, ConfigError, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM,
    config_from_hf_dict, load_model, model_from_config,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 100
# name -> (transformers config class name, its kwargs); Mamba-2 with one and with two groups of heads
TINY = {
    "mamba": ("MambaConfig", dict(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2)),
    "mamba2-g1": ("Mamba2Config", dict(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                       num_heads=8, head_dim=8, n_groups=1, chunk_size=16)),
    "mamba2-g2": ("Mamba2Config", dict(vocab_size=VOCAB, hidden_size=32, state_size=16, num_hidden_layers=2,
                                       num_heads=4, head_dim=16, n_groups=2, chunk_size=16,
                                       tie_word_embeddings=True)),
}


def hf_tiny(name: str, seed: int = 0, **overrides):
    """A tiny transformers model with weights spread out enough that greedy decoding does not collapse."""
    cfg_name, kwargs = TINY[name]
    cfg = getattr(transformers, cfg_name)(**{**kwargs, **overrides})
    return spread_weights(getattr(transformers, cfg_name.replace("Config", "ForCausalLM"))(cfg).eval(), seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name -> (transformers model, its save_pretrained directory)."""
    out = {}
    for name in TINY:
        model = hf_tiny(name)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        out[name] = (model, d)
    return out


def ids(batch=2, length=37, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- parity with transformers -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY))
def test_transformers_checkpoint_gives_same_logits(hf_dirs, name):
    hf, d = hf_dirs[name]
    ours = load_model(d)
    assert type(ours) is (MambaForCausalLM if name == "mamba" else Mamba2ForCausalLM)
    x = ids()  # 37 tokens: more than two Mamba-2 chunks of 16, and a ragged last chunk
    with torch.no_grad():
        want, got = hf(x).logits, ours(x).logits
    assert got.shape == want.shape == (2, 37, VOCAB)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(TINY))
def test_greedy_generation_matches_transformers(hf_dirs, name):
    hf, d = hf_dirs[name]
    ours = load_model(d)
    x = ids(length=9, seed=2)
    want = hf.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[:, x.shape[1]:]
    got = ours.generate(x, 12, eos_token_id=[])
    assert want.shape == (2, 12)
    assert len(set(want.flatten().tolist())) > 3  # a meaningful sequence, not one token repeated
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(TINY))
def test_saved_model_loads_in_transformers(tmp_path, name):
    cfg_name, kwargs = TINY[name]
    config = (MambaConfig if name == "mamba" else Mamba2Config)(**kwargs)
    torch.manual_seed(3)
    ours = model_from_config(config).eval()
    with torch.no_grad():
        ours.backbone.norm_f.weight.normal_()  # differ from the default init so a dropped tensor would show
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    hf = getattr(transformers, cfg_name.replace("Config", "ForCausalLM")).from_pretrained(tmp_path).eval()
    x = ids(seed=4)
    with torch.no_grad():
        assert (hf(x).logits - ours(x).logits).abs().max().item() <= 1e-4
    assert config_from_hf_dict(json.loads((tmp_path / "config.json").read_text())) == config
    again = load_model(tmp_path)
    assert again.config == config
    assert (again.lm_head.weight is again.backbone.embeddings.weight) == config.tie_word_embeddings


@pytest.mark.parametrize("name", ["mamba", "mamba2-g2"])
def test_our_bf16_shards_load_in_transformers(tmp_path, name):
    """What `pretrain` writes for the benchmark's bases (save_dtype bf16, max_shard_size) is transformers' layout."""
    cfg_name, kwargs = TINY[name]
    config = (MambaConfig if name == "mamba" else Mamba2Config)(**kwargs)
    torch.manual_seed(5)
    ours = model_from_config(config).eval()
    ours.save_pretrained(tmp_path, dtype="bf16", max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 2
    hf = getattr(transformers, cfg_name.replace("Config", "ForCausalLM")).from_pretrained(tmp_path).float().eval()
    ours_bf16 = load_model(tmp_path)
    with torch.no_grad():
        assert (hf(ids()).logits - ours_bf16(ids()).logits).abs().max().item() <= 1e-4


def test_sharded_checkpoint(hf_dirs, tmp_path):
    hf, _ = hf_dirs["mamba"]
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        assert (load_model(tmp_path)(ids()).logits - hf(ids()).logits).abs().max().item() <= 1e-4


def test_loss_matches_transformers_and_ignores_minus_100(hf_dirs):
    hf, d = hf_dirs["mamba2-g2"]
    ours = load_model(d)
    x = ids()
    labels = x.clone()
    labels[:, :10] = -100
    with torch.no_grad():
        out = ours(x, labels=labels)
        want = hf(x, labels=labels).loss
        manual = nn.functional.cross_entropy(out.logits[:, 9:-1].reshape(-1, VOCAB), x[:, 10:].reshape(-1))
    assert abs(out.loss.item() - want.item()) <= 1e-5
    assert abs(out.loss.item() - manual.item()) <= 1e-5
    # the dict shape transformers.Trainer reads: loss first, then logits; no cache unless asked
    assert list(out.keys()) == ["loss", "logits"] and out["loss"] is out.loss


def test_inputs_embeds_and_attention_mask(hf_dirs):
    ours = load_model(hf_dirs["mamba"][1])
    x = ids()
    with torch.no_grad():
        a = ours(x).logits
        b = ours(inputs_embeds=ours.get_input_embeddings()(x)).logits
        c = ours(x, attention_mask=torch.ones_like(x).index_fill(1, torch.tensor([35, 36]), 0)).logits
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="right padding"):
        ours(x, attention_mask=torch.ones_like(x).index_fill(1, torch.tensor([0]), 0))
    with pytest.raises(ValueError, match="exactly one"):
        ours(x, inputs_embeds=ours.get_input_embeddings()(x))


def test_logits_to_keep_gives_the_last_positions_only(hf_dirs):
    """A prefill keeps one position's logits (a batch of long prompts would otherwise hold gigabytes of fp32
    vocabulary logits); with prompt tuning the kept positions are still the input's last ones."""
    from ssm_offset.peft import PromptTuningConfig, get_peft_model

    ours = load_model(hf_dirs["mamba"][1])
    x = ids()
    with torch.no_grad():
        full = ours(x).logits
        last = ours(x, logits_to_keep=3).logits
        assert last.shape[1] == 3 and torch.allclose(last, full[:, -3:], atol=1e-6)
        peft = get_peft_model(ours, PromptTuningConfig(num_virtual_tokens=4))
        assert torch.allclose(peft(x, logits_to_keep=1).logits, peft(x).logits[:, -1:], atol=1e-6)
    with pytest.raises(ValueError, match="logits_to_keep"):
        ours(x, labels=x, logits_to_keep=1)


# --- the three paths, with adapter tensors ------------------------------------------------------------------

def adapter_tensors(model, per_row_batch=None, seed=5):
    """Non-zero initial_state / state_offset / y_offset for every mixer (shared, or per row when a batch is given)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in model.backbone.layers:
        m = layer.mixer
        if isinstance(model, MambaForCausalLM):
            state, y = (m.intermediate_size, m.state_size), (m.intermediate_size,)
        else:
            state, y = (m.num_heads, m.head_dim, m.state_size), (m.num_heads, m.head_dim)
        lead = (per_row_batch,) if per_row_batch else ()
        out.append({
            "initial_state": torch.randn(*lead, *state, generator=g) * 0.5,
            "state_offset": torch.randn(*lead, *state, generator=g) * 0.5,
            "y_offset": torch.randn(*lead, *y, generator=g) * 0.5,
        })
    return out


def with_adapters(model, tensors):
    """Hand the tensors to each mixer through a keyword pre-hook: the model itself knows nothing of them."""
    handles = []
    for layer, kw in zip(model.backbone.layers, tensors):
        def hook(module, args, kwargs, kw=kw):
            return args, {**kwargs, **kw}
        handles.append(layer.mixer.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def three_paths(model, x, split):
    with torch.no_grad():
        parallel = model(x).logits
        cache = model.new_cache()
        steps = torch.cat([model(x[:, t : t + 1], cache=cache).logits for t in range(x.shape[1])], dim=1)
        assert cache.seqlen == x.shape[1]
        prefill = model(x[:, :split], use_cache=True)
        rest = [prefill.logits]
        cache = prefill.cache
        mid = split + (x.shape[1] - split) // 2
        rest.append(model(x[:, split:mid], cache=cache).logits)  # a second prefill continuing the cache
        rest += [model(x[:, t : t + 1], cache=cache).logits for t in range(mid, x.shape[1])]
    return parallel, steps, torch.cat(rest, dim=1)


@pytest.mark.parametrize("name", ["mamba", "mamba2-g2"])
@pytest.mark.parametrize("adapters", [None, "shared", "per_row"])
def test_parallel_equals_steps_equals_prefill_plus_steps(hf_dirs, name, adapters):
    model = load_model(hf_dirs[name][1])
    x = ids(length=23)
    with torch.no_grad():
        plain = model(x).logits
    if adapters:
        with_adapters(model, adapter_tensors(model, per_row_batch=2 if adapters == "per_row" else None))
    parallel, steps, mixed = three_paths(model, x, split=7)
    if adapters:
        assert (parallel - plain).abs().max().item() > 1e-2  # the adapter tensors did reach the scans
    assert (steps - parallel).abs().max().item() <= 1e-4
    assert (mixed - parallel).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["mamba", "mamba2-g1"])
def test_wrapped_linear_applies_on_every_path(hf_dirs, name):
    """A LoRA-style wrapper around a projection changes the parallel forward and the step path alike."""

    class Shifted(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base = base
            self.delta = nn.Linear(base.in_features, base.out_features, bias=False)
            nn.init.normal_(self.delta.weight, std=0.3)

        def forward(self, x):
            return self.base(x) + self.delta(x)

    model = load_model(hf_dirs[name][1])
    x = ids(length=11)
    with torch.no_grad():
        before = model(x).logits
    for layer in model.backbone.layers:
        mixer = layer.mixer
        for proj in (["dt_proj", "x_proj"] if name == "mamba" else ["in_proj"]):
            setattr(mixer, proj, Shifted(getattr(mixer, proj)))
    parallel, steps, mixed = three_paths(model, x, split=4)
    assert (parallel - before).abs().max().item() > 1e-2
    assert (steps - parallel).abs().max().item() <= 1e-4
    assert (mixed - parallel).abs().max().item() <= 1e-4


def test_initial_state_only_seeds_a_fresh_cache(hf_dirs):
    model = load_model(hf_dirs["mamba"][1])
    mixer = model.backbone.layers[0].mixer
    h = torch.randn(2, 1, 32)
    s0 = torch.randn(mixer.intermediate_size, mixer.state_size)
    cache = model.new_cache()
    with torch.no_grad():
        a = mixer(h, cache=cache, initial_state=s0)
        b = mixer(h, cache=Cache.empty(2))
        after = mixer(h, cache=cache, initial_state=s0 * 100)  # the cache carries the state now
        cache2 = Cache.empty(2)
        mixer(h, cache=cache2, initial_state=s0)
        ref = mixer(h, cache=cache2)
    assert (a - b).abs().max().item() > 1e-3
    assert torch.allclose(after, ref, atol=1e-6)


# --- generation ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mamba", "mamba2-g2"])
def test_ragged_batch_equals_each_prompt_alone(hf_dirs, name):
    model = load_model(hf_dirs[name][1])
    with_adapters(model, adapter_tensors(model))  # a learned initial state: left padding would not be exact
    prompts = [ids(1, n, seed=n)[0].tolist() for n in (5, 1, 9, 5)]
    batch = model.generate(prompts, 10, eos_token_id=[])
    assert batch.shape == (4, 10)
    for i, p in enumerate(prompts):
        assert torch.equal(batch[i], model.generate([p], 10, eos_token_id=[])[0])
    assert not torch.equal(batch[0], batch[1])


def test_sampling(hf_dirs):
    model = load_model(hf_dirs["mamba2-g1"][1])
    x = ids(length=6)
    greedy = model.generate(x, 10, eos_token_id=[])
    a = model.generate(x, 10, do_sample=True, temperature=1.5, seed=7, eos_token_id=[])
    b = model.generate(x, 10, do_sample=True, temperature=1.5, seed=7, eos_token_id=[])
    c = model.generate(x, 10, do_sample=True, temperature=1.5, seed=8, eos_token_id=[])
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, greedy)
    assert torch.equal(model.generate(x, 10, do_sample=True, top_k=1, seed=9, eos_token_id=[]), greedy)
    assert torch.equal(model.generate(x, 10, do_sample=True, top_p=1e-6, seed=9, eos_token_id=[]), greedy)
    # nucleus sampling stays inside the nucleus: with top_p=0.5 every token was among the most likely half
    nucleus = model.generate(x[:1], 1, do_sample=True, top_p=0.5, seed=10, eos_token_id=[])
    probs = model(x[:1]).logits[0, -1].softmax(-1)
    order = probs.argsort(descending=True)
    rank = (order == nucleus[0, 0]).nonzero().item()
    assert probs[order[:rank]].sum().item() < 0.5
    with pytest.raises(ValueError, match="do_sample"):
        model.generate(x, 2, top_k=5)


def test_eos_stops_rows_and_pads(hf_dirs):
    model = load_model(hf_dirs["mamba"][1])
    x = ids(length=6)
    free = model.generate(x, 8, eos_token_id=[])
    row0, row1 = free.tolist()
    # an eos that row 0 emits first at position p (p >= 1) and row 1 never emits
    p = next(p for p in range(1, 7) if row0[p] not in row0[:p] and row0[p] not in row1)
    out = model.generate(x, 8, eos_token_id=row0[p], pad_token_id=-1)
    assert out[0].tolist() == row0[: p + 1] + [-1] * (7 - p)
    assert torch.equal(out[1], free[1])
    alone = model.generate(x[:1], 8, eos_token_id=row0[p])
    assert alone.shape == (1, p + 1)  # every row finished: decoding stops early


# --- mamba_ssm format ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,tie", [("mamba", True), ("mamba2-g2", False)])
def test_mamba_ssm_checkpoint(hf_dirs, tmp_path, name, tie):
    """A checkpoint laid out as mamba_ssm's MambaLMHeadModel saves one: vocab padded to 16, its key names."""
    hf = hf_tiny(name, seed=11, tie_word_embeddings=tie)
    padded = 112
    state = {}
    for k, v in hf.state_dict().items():
        k = k.replace("backbone.embeddings.", "backbone.embedding.")
        if k in ("backbone.embedding.weight", "lm_head.weight"):
            v = torch.cat([v, torch.randn(padded - VOCAB, v.shape[1])])
        state[k] = v.clone()
    if tie:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    c = hf.config
    ssm_cfg = {"d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand}
    if name == "mamba":
        ssm_cfg |= {"dt_rank": c.time_step_rank, "dt_min": 0.001}
    else:
        ssm_cfg |= {"layer": "Mamba2", "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": 16,
                    "rmsnorm": True, "norm_before_gate": False}
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": VOCAB,
        "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": tie,
    }))
    ours = load_model(tmp_path)
    assert ours.config.vocab_size == padded
    x = ids()
    with torch.no_grad():
        got, want = ours(x).logits, hf(x).logits
    assert got.shape == (2, 37, padded)
    assert (got[..., :VOCAB] - want).abs().max().item() <= 1e-4
    # a round trip through Hugging Face format keeps the padded vocabulary
    ours.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "hf")(x).logits, got)


# --- bad input ----------------------------------------------------------------------------------------------

def test_bad_tensors_fail_in_one_error(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    src = hf_dirs["mamba"][1]
    tensors = load_file(src / "model.safetensors")
    del tensors["backbone.layers.1.mixer.D"]
    tensors["backbone.layers.2.mixer.D"] = torch.ones(64)
    tensors["backbone.layers.0.mixer.x_proj.weight"] = torch.zeros(19, 64)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "model.safetensors" in msg
    assert "missing: ['backbone.layers.1.mixer.D']" in msg
    assert "unexpected: ['backbone.layers.2.mixer.D']" in msg
    assert "backbone.layers.0.mixer.x_proj.weight: checkpoint (19, 64), model (18, 64)" in msg


def test_bad_configs_name_the_field(hf_dirs, tmp_path):
    base = json.loads((hf_dirs["mamba"][1] / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"'model_type' is 'mamba3'; accepted values: 'mamba', 'mamba2'"):
        config_from_hf_dict({**base, "model_type": "mamba3"})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['d_state_typo'\]"):
        config_from_hf_dict({**base, "d_state_typo": 3})
    with pytest.raises(ConfigError, match="'architectures'"):
        config_from_hf_dict({**base, "architectures": ["MambaForSequenceClassification"]})
    with pytest.raises(ConfigError, match="hidden_act"):
        config_from_hf_dict({**base, "hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="'intermediate_size' is 65"):
        config_from_hf_dict({**base, "intermediate_size": 65})
    m2 = {"model_type": "mamba2", "hidden_size": 32, "num_heads": 3, "head_dim": 8, "n_groups": 1}
    with pytest.raises(ConfigError, match="num_heads \\* head_dim"):
        config_from_hf_dict(m2)
    # mamba_ssm dialect, read through load_model so the file is named
    ssm = {"d_model": 32, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba3"}}
    (tmp_path / "config.json").write_text(json.dumps(ssm))
    with pytest.raises(ConfigError, match=r"config.json: field 'ssm_cfg.layer' is 'Mamba3'; accepted values: "
                                          r"'Mamba1', 'Mamba2'"):
        load_model(tmp_path)
    for bad, pattern in [
        ({**ssm, "ssm_cfg": {}, "n_layers": 2}, r"unknown mamba_ssm field\(s\) \['n_layers'\]"),
        ({**ssm, "ssm_cfg": {"layer": "Mamba2", "d_stat": 4}}, r"unknown field\(s\) in 'ssm_cfg'.*'d_stat'"),
        ({**ssm, "ssm_cfg": {}, "d_intermediate": 64}, "'d_intermediate' is 64"),
        ({**ssm, "ssm_cfg": {"layer": "Mamba2", "headdim": 16, "norm_before_gate": True}}, "norm_before_gate"),
        ({"n_layer": 2}, "neither a Hugging Face config"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=pattern):
            load_model(tmp_path)


def test_missing_weights_and_hub_errors(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 32}))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        load_model(tmp_path)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="'no-such-owner/no-such-model'"):
        load_model("no-such-owner/no-such-model")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="'state-spaces/mamba-130m-hf'.*huggingface_hub is not installed"):
        load_model("state-spaces/mamba-130m-hf")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_model(str(tmp_path / "nope" / "deeper/still"))


# --- as the model of transformers.Trainer ---------------------------------------------------------------------

def test_trains_and_saves_under_transformers_trainer(tmp_path):
    pytest.importorskip("accelerate")
    from safetensors.torch import load_file

    torch.manual_seed(12)
    model = model_from_config(MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=1))
    assert "lm_head.weight" not in model.state_dict()  # tied head stored once: safetensors takes the dict as is
    g = torch.Generator().manual_seed(13)
    data = [{"input_ids": torch.randint(0, 50, (12,), generator=g), "labels": torch.randint(0, 50, (12,), generator=g),
             "attention_mask": torch.ones(12, dtype=torch.long)} for _ in range(8)]
    before = model.backbone.layers[0].mixer.x_proj.weight.detach().clone()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-2,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    assert math.isfinite(trainer.train().training_loss)
    assert (model.backbone.layers[0].mixer.x_proj.weight - before).abs().max().item() > 0
    trainer.save_model(str(tmp_path / "saved"))
    fresh = model_from_config(model.config)
    fresh.load_state_dict(load_file(tmp_path / "saved" / "model.safetensors"), strict=True)
    assert fresh.is_tied and torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_adapter_tensors_get_gradients_and_bf16_runs(hf_dirs):
    model = load_model(hf_dirs["mamba2-g2"][1])
    tensors = adapter_tensors(model)
    for kw in tensors:
        for t in kw.values():
            t.requires_grad_(True)
    with_adapters(model, tensors)
    x = ids(length=20)
    model(x, labels=x).loss.backward()
    for kw in tensors:
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in kw.values())
    assert model.backbone.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0

    half = load_model(hf_dirs["mamba"][1], dtype=torch.bfloat16)
    kept = load_model(hf_dirs["mamba"][1], dtype=None)  # the checkpoint's own dtype
    assert half.lm_head.weight.dtype == torch.bfloat16 and kept.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        full = kept(x).logits
        parallel = half(x).logits
        cache = half.new_cache()
        steps = torch.cat([half(x[:, t : t + 1], cache=cache).logits for t in range(x.shape[1])], dim=1)
    assert cache.ssm[0].dtype == torch.float32 and cache.conv[0].dtype == torch.bfloat16
    assert (parallel - full).abs().max().item() < 0.1
    assert (steps - parallel).abs().max().item() < 0.1


def test_mamba_mixer_hands_the_scan_channel_major_x_z_and_delta(monkeypatch):
    """The time-parallel kernels take only channel-major inputs (cuda/selective_scan/step.cu, time_parallel): the mixer
    lays u, delta and z out with each channel's steps adjacent (a layout copy of a projection's output each), and the
    model's output is what the time-major views give."""
    from ssm_offset.models import mamba as mamba_module
    from ssm_offset.ops._common import time_major

    model = MambaForCausalLM(MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2)).eval()
    spread_weights(model)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    real, seen = mamba_module.selective_scan, []

    def spy(u, delta, A, B, C, D=None, z=None, **kw):
        seen.append((u, delta, z))
        return real(u, delta, A, B, C, D=D, z=z, **kw)

    def time_major_spy(u, delta, A, B, C, D=None, z=None, **kw):
        views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (delta, z)]
        return real(u, views[0], A, B, C, D=D, z=views[1], **kw)

    monkeypatch.setattr(mamba_module, "selective_scan", spy)
    with torch.no_grad():
        logits = model(ids).logits
    assert len(seen) == 2
    for u, delta, z in seen:
        for name, t in (("u", u), ("delta", delta), ("z", z)):
            assert t.stride(-1) == 1 and not time_major(t), (name, t.stride())
    monkeypatch.setattr(mamba_module, "selective_scan", time_major_spy)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits)
