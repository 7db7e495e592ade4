"""Self-adaptation (ssm_offset.adapt): the expert library, mixtures (one-hot = the expert, batched rows = each
candidate alone = the rebuilt weights), the few-shot CEM search, and bad input."""
import copy

import numpy as np
import pytest
import torch

from ssm_offset.adapt import (
    ExpertError, FewShotError, FewShotSet, PopulationEvaluator, add_weighted_adapter, few_shot_adapt,
    list_experts, load_experts, mixing_groups, mixture_weights, model_fingerprint, save_expert,
)
from ssm_offset.models import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
from ssm_offset.peft import AdapterError, config_for, get_peft_model

VOCAB = 48
METHODS = ["svf", "state-offset-h", "state-offset-y", "initial-state", "lora-inout"]
EXPERTS = ["e0", "e1", "e2"]


def mamba1(seed=0):
    torch.manual_seed(seed)
    return MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2)).eval()


def mamba2(seed=0):
    torch.manual_seed(seed)
    return Mamba2ForCausalLM(Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2,
                                          num_heads=4, head_dim=16, n_groups=2, chunk_size=8)).eval()


ARCHS = {"mamba": mamba1, "mamba2": mamba2}


def with_experts(base, method, scale=0.3):
    """A PeftModel holding three distinct, non-trivial experts e0, e1, e2 of `method`."""
    peft = get_peft_model(base, config_for(method), adapter_name="e0")
    for i, name in enumerate(EXPERTS):
        if i:
            peft.add_adapter(name, config_for(method))
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for pname, p in peft.named_parameters():
                if name in pname.split("."):
                    p.add_(torch.randn(p.shape, generator=g) * scale)
    peft.set_adapter("e0")
    return peft


def few_shot(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        lp, lt = int(torch.randint(3, 9, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        pairs.append((torch.randint(3, VOCAB, (lp,), generator=g).tolist(),
                      torch.randint(3, VOCAB, (lt,), generator=g).tolist()))
    return FewShotSet.from_ids(pairs, pad_id=0, eos_id=2)


def ids(batch=4, length=10, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- mixtures ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_one_hot_mixture_is_the_expert_exactly(arch, method):
    model = with_experts(ARCHS[arch](), method)
    x = ids()
    with torch.no_grad():
        for k, name in enumerate(EXPERTS):
            model.set_adapter(name)
            alone = model(x).logits
            w = torch.zeros(x.shape[0], 3)
            w[:, k] = 1.0
            with model.row_adapters(EXPERTS, w):
                assert torch.equal(model(x).logits, alone), f"{name}: one-hot row mixture differs"
            groups = mixing_groups(model, EXPERTS, "matrix")
            with model.row_adapters(EXPERTS, {p: w for g in groups for p in g}):
                assert torch.equal(model(x).logits, alone)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("granularity", ["expert", "layer"])
def test_batched_population_equals_each_candidate_alone(arch, method, granularity):
    """Rows of one batch under P mixtures == the mixture built as an adapter == the weights rebuilt per candidate
    (the reference way), for logits and for the CEM fitness (fp32, ≤ 1e-5)."""
    model = with_experts(ARCHS[arch](), method)
    data = few_shot()
    ev = PopulationEvaluator(model, EXPERTS, data, granularity=granularity)
    pop = np.random.default_rng(0).uniform(0, 1, (6, ev.dim))
    batched, sequential = ev.evaluate(pop), ev.evaluate_sequential(pop)
    for key in ("fitness", "loglik", "accuracy"):
        np.testing.assert_allclose(batched[key], sequential[key], rtol=0, atol=1e-5, err_msg=key)
    x = ids(2, 9)
    weights = mixture_weights(torch.tensor(pop[:3], dtype=torch.float32), ev.groups, repeat=2)
    with torch.no_grad(), model.row_adapters(EXPERTS, weights):
        rows = model(x.repeat(3, 1)).logits
    for p in range(3):
        add_weighted_adapter(model, EXPERTS, pop[p].reshape(len(ev.groups), 3), "mix", granularity)
        with torch.no_grad():
            torch.testing.assert_close(rows[2 * p: 2 * p + 2], model(x).logits, rtol=1e-5, atol=1e-5)
        model.delete_adapter("mix")


def test_population_is_chunked_without_changing_scores():
    model = with_experts(mamba1(), "svf")
    data = few_shot()
    pop = np.random.default_rng(1).uniform(0, 1, (7, 3))
    whole = PopulationEvaluator(model, EXPERTS, data).evaluate(pop)
    chunked = PopulationEvaluator(model, EXPERTS, data, max_rows=2 * len(data))  # 2 candidates per forward
    np.testing.assert_allclose(chunked.evaluate(pop)["fitness"], whole["fitness"], atol=1e-6)
    assert chunked.forwards == 4


def test_fitness_ranks_accuracy_first_and_breaks_ties_by_likelihood():
    model = with_experts(mamba1(), "state-offset-h")
    ev = PopulationEvaluator(model, EXPERTS, few_shot())
    r = ev.evaluate(np.random.default_rng(2).uniform(0, 1, (8, 3)))
    correct = r["accuracy"] * len(few_shot())
    np.testing.assert_allclose(r["fitness"], correct + np.exp(r["loglik"]))
    assert ((r["fitness"] - correct > 0) & (r["fitness"] - correct < 1)).all()
    loss = PopulationEvaluator(model, EXPERTS, few_shot(), objective="loss").evaluate(np.eye(3))
    with torch.no_grad():
        model.set_adapter("e1")
        d = few_shot()
        nll = model(d.input_ids, labels=d.labels).loss  # token-mean cross-entropy over the label tokens
    np.testing.assert_allclose(loss["fitness"][1], -float(nll), rtol=1e-5)


def test_lora_mixture_concatenates_ranks():
    model = with_experts(mamba1(), "lora-inout")
    add_weighted_adapter(model, EXPERTS, [0.5, 0.25, 1.0], "mix")
    assert model.peft_config["mix"].r == 3 * model.peft_config["e0"].r
    w = torch.tensor([[0.5, 0.25, 1.0]]).repeat(2, 1)
    x = ids(2, 8)
    with torch.no_grad():
        mixed = model(x).logits
        with model.row_adapters(EXPERTS, w):
            torch.testing.assert_close(model(x).logits, mixed, rtol=1e-5, atol=1e-5)


def test_mixing_adapters_of_different_methods_is_an_error():
    model = with_experts(mamba1(), "svf")
    model.add_adapter("offset", config_for("state-offset-h"))
    with pytest.raises(AdapterError, match="different methods"):
        add_weighted_adapter(model, ["e0", "offset"], [0.5, 0.5], "mix")
    with pytest.raises(ValueError, match="granularity"):
        mixing_groups(model, EXPERTS, "head")
    with pytest.raises(AdapterError, match="no entry for adapter layer"):
        with model.row_adapters(EXPERTS, {"base_model.backbone.layers.0.mixer.in_proj": torch.ones(1, 3)}):
            pass


# -- the CEM search ----------------------------------------------------------------------------------------------
class _Quadratic:
    """A synthetic objective with a known optimum, in the evaluator's interface."""

    def __init__(self, target):
        self.target, self.dim, self.experts, self.groups, self.granularity = target, target.size, ["a", "b", "c"], \
            [["g0"], ["g1"]], "layer"
        self.profile = {}

    def _tick(self, key, t0):
        return t0

    def evaluate(self, pop):
        d = ((pop - self.target) ** 2).sum(1)
        return {"fitness": -d, "accuracy": -d, "loglik": -d}

    def evaluate_base(self):
        return self.evaluate(np.zeros((1, self.dim)))

    def one_hot(self, k):
        a = np.zeros((2, 3))
        a[:, k] = 1
        return a.reshape(1, -1)


def test_cem_driver_converges_to_a_known_optimum():
    target = np.array([0.1, 0.8, 0.4, 0.9, 0.0, 0.55])
    result = few_shot_adapt(None, None, None, evaluator=_Quadratic(target), iterations=60, seed=3)
    assert np.abs(result.alpha.reshape(-1) - target).max() < 0.03
    assert result.fitness > -2e-3 and result.alpha.shape == (2, 3)
    assert result.history == sorted(result.history)  # the elite is kept: the best never gets worse


def test_cem_finds_the_mixture_that_produced_the_labels():
    """Labels are the greedy answers of a known mixture α*: CEM must find a mixture that answers all of them
    (α* scores 100 %), where the base model and each expert alone do not."""
    model = with_experts(mamba1(), "state-offset-h", scale=2.0)
    target = [0.2, 0.9, 0.5]
    prompts = [ids(1, 6, seed=s)[0].tolist() for s in range(8)]
    add_weighted_adapter(model, EXPERTS, target, "star")
    labels = model.generate(prompts, 3, eos_token_id=[]).tolist()
    model.delete_adapter("star")
    data = FewShotSet.from_ids(list(zip(prompts, labels)))
    result = few_shot_adapt(model, EXPERTS, data, iterations=25, seed=0)
    assert result.after["accuracy"] == 1.0
    assert max(r["accuracy"] for r in result.experts_alone.values()) < 1.0 and result.before["accuracy"] < 1.0
    ev = PopulationEvaluator(model, EXPERTS, data)
    star = ev.evaluate(np.array([target]))
    assert result.fitness >= star["fitness"][0] - 0.05  # as good as the known optimum, up to the tie-break
    assert sum(result.profile.values()) <= result.seconds


# -- the expert library ------------------------------------------------------------------------------------------
def test_experts_round_trip_through_the_store(tmp_path):
    model = with_experts(mamba2(), "svf")
    for i, name in enumerate(EXPERTS):
        save_expert(tmp_path, model, name, task=f"task{i}", tags=["demo"], metrics={"accuracy": 0.5 + i / 10})
    entries = list_experts(tmp_path, mamba2())
    assert [e["name"] for e in entries] == EXPERTS
    assert entries[2]["task"] == "task2" and entries[2]["metrics"] == {"accuracy": 0.7}
    assert "task1" in entries[1]["tags"] and entries[0]["method"] == "SVF"
    loaded = load_experts(mamba2(), tmp_path)
    x = ids()
    with torch.no_grad():
        for name in EXPERTS:
            model.set_adapter(name)
            loaded.set_adapter(name)
            assert torch.equal(loaded(x).logits, model(x).logits)
    assert list_experts(tmp_path, mamba2(seed=1)) == []  # another checkpoint of the same shape
    assert model_fingerprint(model) == model_fingerprint(mamba2()) != model_fingerprint(mamba2(seed=1))


def test_expert_of_another_base_model_is_refused(tmp_path):
    save_expert(tmp_path, with_experts(mamba1(seed=0), "state-offset-h"), "e1", task="t")
    with pytest.raises(ExpertError, match="another base model.*fingerprint"):
        load_experts(mamba1(seed=1), tmp_path)


def test_empty_store_and_unknown_names_are_refused(tmp_path):
    from ssm_offset.store import AdapterStore

    AdapterStore(tmp_path / "empty")
    with pytest.raises(ExpertError, match="holds no experts"):
        load_experts(mamba1(), tmp_path / "empty")
    save_expert(tmp_path / "s", with_experts(mamba1(), "svf"), "e0")
    with pytest.raises(ExpertError, match="no expert"):
        load_experts(mamba1(), tmp_path / "s", ["nope"])
    with pytest.raises(ExpertError, match="identifier"):
        save_expert(tmp_path / "s", with_experts(mamba1(), "svf"), "not-an-identifier")
    with pytest.raises(FileNotFoundError):
        load_experts(mamba1(), tmp_path / "missing")


def test_few_shot_examples_without_labels_are_refused(tmp_path):
    with pytest.raises(FewShotError, match="example 1.*no label"):
        FewShotSet.from_ids([([1, 2], [3]), ([4, 5], [])])
    with pytest.raises(FewShotError, match=r"example\(s\) \[0\] have no label"):
        FewShotSet(torch.ones(1, 4, dtype=torch.long), torch.full((1, 4), -100))
    tokenizer = _word_tokenizer(tmp_path)
    with pytest.raises(FewShotError, match="example 1 has no label.*'output'.*missing"):
        FewShotSet.from_records([{"input": "a b", "output": "c"}, {"input": "a"}], tokenizer)
    with pytest.raises(FewShotError, match="example 0 has no label.*empty"):
        FewShotSet.from_records([{"input": "a b", "output": ""}], tokenizer)
    data = FewShotSet.from_records([{"input": "a b", "output": "c"}, {"input": "b", "output": "a c"}], tokenizer)
    assert data.input_ids.shape[0] == 2 and int((data.labels != -100).sum()) == 2 + 3  # labels + eos


def _word_tokenizer(tmp_path):
    """A tiny word-level tokenizer.json (ids < VOCAB), made with the `tokenizers` library."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "###": 2, **{w: 3 + i for i, w in enumerate("a b c d e f".split())}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)
