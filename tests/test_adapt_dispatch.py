"""Two-pass inference (SelfAdaptiveModel) and expert training (cross-entropy, REINFORCE + KL), on a char-level
tiny model: a model cannot follow a classification prompt untrained, so the prompt strategy is tested with a
base fine-tuned to answer that prompt, and its routing accuracy is asserted for what it is."""
import random

import pytest
import torch

from ssm_offset.adapt import FewShotSet, SelfAdaptiveModel, classifier_data, few_shot_adapt, train_expert
from ssm_offset.adapt.self_adaptive import OTHERS
from ssm_offset.adapt.train import fit_cross_entropy
from ssm_offset.models import MambaConfig, MambaForCausalLM
from ssm_offset.peft import AdapterError, config_for, get_peft_model

PROMPT = "Q: {request}\nC:"  # short on purpose (the default is the paper's long prompt)
CATEGORIES = {"math": "abcde", "code": "pqrst", OTHERS: "0123456789"}


def encode(text):
    return [min(ord(c), 127) for c in text]


def requests(n, seed):
    r = random.Random(seed)
    return {c: ["".join(r.choice(letters) for _ in range(r.randint(4, 9))) for _ in range(n)]
            for c, letters in CATEGORIES.items()}


def char_model(embedding_scale=1.0):
    torch.manual_seed(0)
    m = MambaForCausalLM(MambaConfig(vocab_size=128, hidden_size=32, state_size=8, num_hidden_layers=2,
                                     eos_token_id=0, pad_token_id=0)).eval()
    with torch.no_grad():
        m.backbone.embeddings.weight.mul_(embedding_scale)  # a head able to make confident predictions
    return m


def routing_accuracy(sam, held_out):
    reqs = [r for c in held_out for r in held_out[c]]
    gold = [None if c == OTHERS else c for c in held_out for _ in held_out[c]]
    chosen = sam.choose(reqs)
    return sum(a == b for a, b in zip(chosen, gold)) / len(gold), reqs, chosen


def test_prompt_strategy_routes_with_a_base_fine_tuned_to_answer_the_prompt():
    base = char_model()
    fit_cross_entropy(base, classifier_data(requests(40, 0), encode, PROMPT, eos_id=0), steps=30, lr=1e-2,
                      batch_size=16)
    peft = get_peft_model(base, config_for("state-offset-h"), adapter_name="math_expert")
    peft.add_adapter("code_expert", config_for("state-offset-h"))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if ".code_expert" in n:
                p.normal_(0, 0.5)
    sam = SelfAdaptiveModel(peft, {"math": "math_expert", "code": "code_expert"}, encode=encode, prompt=PROMPT)
    acc, reqs, chosen = routing_accuracy(sam, requests(10, 99))
    assert acc >= 0.9, f"prompt-based routing accuracy {acc:.2f} on 30 held-out requests (chance 1/3)"
    # pass two: each request answered exactly as its expert (or the base, for "others") answers it alone
    out, choices = sam.generate(reqs, 4, return_choices=True, eos_token_id=[])
    assert choices == chosen and None in choices and "code" in choices
    for req, choice, answer in zip(reqs, choices, out):
        if choice is None:
            with peft.disable_adapter():
                ref = peft.generate([encode(req)], 4, eos_token_id=[])
        else:
            peft.set_adapter(sam.experts[choice])
            ref = peft.generate([encode(req)], 4, eos_token_id=[])
        assert answer == ref[0].tolist()


def test_prompt_strategy_with_a_dispatcher_adapter_and_others_to_the_base():
    """The real-task bench's form (the base stays the experts' base): an adapter, not the base, is fine-tuned to
    answer the prompt; pass one runs with it, then the active adapter is back; "others" requests get base weights."""
    peft = get_peft_model(char_model(embedding_scale=5.0), config_for("lora-inout"), adapter_name="dispatch")
    for name in ("math_expert", "code_expert"):
        peft.add_adapter(name, config_for("lora-inout"))
    train_expert(peft, "dispatch", classifier_data(requests(40, 0), encode, PROMPT, eos_id=0), steps=60, lr=2e-2,
                 batch_size=16)
    peft.set_adapter("code_expert")
    experts = {"math": "math_expert", "code": "code_expert"}
    sam = SelfAdaptiveModel(peft, experts, encode=encode, prompt=PROMPT, dispatcher="dispatch")
    acc, reqs, chosen = routing_accuracy(sam, requests(10, 99))
    assert peft.active_adapter == "code_expert"
    # pass one is the dispatcher's own greedy answer, parsed
    peft.set_adapter("dispatch")
    direct = peft.generate([sam.dispatch_prompt(r) for r in reqs], sam.dispatch_tokens, eos_token_id=[])
    assert chosen == [sam.parse(a) for a in direct.tolist()]
    # measured 1.0 (chance 1/3)
    assert acc >= 0.9, f"dispatcher-adapter routing accuracy {acc:.2f} on 30 held-out requests (chance 1/3)"
    base_choice = SelfAdaptiveModel(peft, experts, encode=encode, prompt=PROMPT).choose(reqs)
    assert base_choice != chosen  # the untrained base answers differently: the adapter did the routing
    out, choices = sam.generate(reqs, 4, return_choices=True, eos_token_id=[])
    others = [i for i, c in enumerate(choices) if c is None]
    assert others
    with peft.disable_adapter():
        assert [out[i] for i in others] == peft.generate([encode(reqs[i]) for i in others], 4, eos_token_id=[]).tolist()
    with pytest.raises(AdapterError):
        SelfAdaptiveModel(peft, experts, encode=encode, dispatcher="nope")


def test_parse_takes_the_first_category_named_and_others_means_base():
    peft = get_peft_model(char_model(), config_for("svf"), adapter_name="m")
    peft.add_adapter("c", config_for("svf"))
    sam = SelfAdaptiveModel(peft, {"math": "m", "code": "c"}, encode=encode)
    assert sam.parse(encode("xx code then math")) == "code"
    assert sam.parse(encode(" math")) == "math"
    assert sam.parse(encode(" others, not math")) is None
    assert sam.parse(encode("no idea")) is None
    text = SelfAdaptiveModel(peft, ["m", "c"], encode=encode).dispatch_text("2+2?")
    assert "3 categories: m, c, or 'others'" in text and text.endswith("Question: 2+2?\nCategory:")
    with pytest.raises(ValueError, match="reserved"):
        SelfAdaptiveModel(peft, {OTHERS: "m"}, encode=encode)
    with pytest.raises(ValueError, match="needs `classifier`"):
        SelfAdaptiveModel(peft, ["m"], strategy="classifier")
    with pytest.raises(ValueError, match="adapt"):
        SelfAdaptiveModel(peft, ["m"], strategy="few-shot").choose(["x"])


def test_classification_expert_routes_better_than_chance():
    peft = get_peft_model(char_model(embedding_scale=5.0), config_for("lora-inout"), adapter_name="router")
    for name in ("math_expert", "code_expert"):
        peft.add_adapter(name, config_for("lora-inout"))
    stats = train_expert(peft, "router", classifier_data(requests(40, 0), encode, PROMPT, eos_id=0), steps=60,
                         lr=2e-2, batch_size=16)
    assert stats.losses[-1] < stats.losses[0] / 2
    sam = SelfAdaptiveModel(peft, {"math": "math_expert", "code": "code_expert"}, "classifier", classifier="router",
                            encode=encode, prompt=PROMPT)
    acc, _, _ = routing_accuracy(sam, requests(10, 99))
    # measured 0.67 (2x chance): a 2-layer, 32-wide random base learns this through a LoRA only partly
    assert acc >= 0.6, f"classification-expert routing accuracy {acc:.2f} (chance 1/3)"
    # chunked classifier forwards (memory on CPU) pick the same categories as one forward over all rows
    reqs = [r for rs in requests(10, 99).values() for r in rs]
    whole = SelfAdaptiveModel(peft, {"math": "math_expert", "code": "code_expert"}, "classifier",
                              classifier="router", encode=encode, prompt=PROMPT, classify_rows=0)
    chunked = SelfAdaptiveModel(peft, {"math": "math_expert", "code": "code_expert"}, "classifier",
                                classifier="router", encode=encode, prompt=PROMPT, classify_rows=7)
    assert whole.choose(reqs) == chunked.choose(reqs)


def test_few_shot_strategy_answers_with_the_cem_mixture():
    peft = get_peft_model(char_model(), config_for("state-offset-y"), adapter_name="a")
    peft.add_adapter("b", config_for("state-offset-y"))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if n.endswith(".a") or n.endswith(".b"):
                p.normal_(0, 1.0)
    sam = SelfAdaptiveModel(peft, ["a", "b"], "few-shot", encode=encode)
    data = FewShotSet.from_ids([(encode("ab"), encode("x")), (encode("pq"), encode("y"))], eos_id=0)
    result = sam.adapt(data, iterations=3, population=8)
    assert sam.choose(["anything"]) == ["few-shot"] and sam.mixture is result
    out = sam.generate(["ab"], 3, eos_token_id=[])
    peft.set_adapter(sam.mixture_adapter)
    assert out[0] == peft.generate([encode("ab")], 3, eos_token_id=[])[0].tolist()


# -- expert training ---------------------------------------------------------------------------------------------
def _answer_task(n=16, seed=0):
    """Every prompt's answer is token 7 (then eos 0)."""
    g = torch.Generator().manual_seed(seed)
    return FewShotSet.from_ids([(torch.randint(10, 48, (5,), generator=g).tolist(), [7]) for _ in range(n)], eos_id=0)


def _tiny():
    torch.manual_seed(0)
    m = MambaForCausalLM(MambaConfig(vocab_size=48, hidden_size=32, state_size=8, num_hidden_layers=2,
                                     eos_token_id=0, pad_token_id=0)).eval()
    with torch.no_grad():
        m.backbone.embeddings.weight.mul_(5.0)
    return m


def test_svf_expert_by_cross_entropy():
    peft = get_peft_model(_tiny(), config_for("svf"), adapter_name="task")
    stats = train_expert(peft, "task", _answer_task(), objective="ce", steps=30, lr=5e-2)
    assert stats.losses[-1] < 0.7 * stats.losses[0]


def test_reinforce_raises_the_reward_and_the_kl_penalty_holds_the_policy_at_the_base():
    """REINFORCE with the paper's sparse reward shape (1 when the first answer token is the label's). On this
    random 2-layer base a LoRA expert learns it within 40 steps; an SVF expert does not (its singular-value
    scalings of a random model barely move the answer distribution: 0.02 → 0.05), so the estimator is tested
    on LoRA — the code path is the same for every method."""
    def run(kl):
        peft = get_peft_model(_tiny(), config_for("lora-inout"), adapter_name="task")
        return train_expert(peft, "task", _answer_task(), objective="reinforce", steps=40, lr=3e-2, batch_size=16,
                            kl_coef=kl, max_new_tokens=1, reward=lambda answer, label: float(answer[0] == label[0]))
    free, held = run(0.0), run(5.0)
    first, last = sum(free.rewards[:8]) / 8, sum(free.rewards[-8:]) / 8
    assert last > first + 0.1, (first, last)  # measured 0.03 -> 0.25
    assert free.kls == [0.0] * 40  # not computed without a penalty
    assert abs(held.kls[0]) < 1e-6 and max(held.kls) < 0.02  # starts at the base, stays near it
    assert sum(held.rewards[-8:]) / 8 < last


def test_train_expert_bad_input():
    peft = get_peft_model(_tiny(), config_for("svf"), adapter_name="task")
    with pytest.raises(ValueError, match="objective"):
        train_expert(peft, "task", _answer_task(), objective="dpo")
    with pytest.raises(ValueError, match="no adapter named"):
        train_expert(peft, "nope", _answer_task())
