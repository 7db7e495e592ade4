"""Self-adaptation (Transformer²) for state-space models: an expert library, linear mixtures of experts, a
fast few-shot CEM search over mixture weights, and two-pass inference. Submodules are imported on first use.

    experts.py        save_expert / load_experts / list_experts on the Rust adapter store (base fingerprints)
    mixing.py         add_weighted_adapter (linear, per layer), mixing_groups, recomposed (the reference way)
    fewshot.py        FewShotSet, PopulationEvaluator (a whole CEM population per batched forward), few_shot_adapt
    cem.py            CEM, the Rust core's cross-entropy method
    self_adaptive.py  SelfAdaptiveModel: prompt-based, classification-expert and few-shot dispatch
    train.py          train_expert: cross-entropy or REINFORCE (+ KL to the base)
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CEM": "cem",
    "ExpertError": "experts", "save_expert": "experts", "load_experts": "experts", "list_experts": "experts",
    "model_fingerprint": "experts",
    "add_weighted_adapter": "mixing", "mixing_groups": "mixing", "mixture_weights": "mixing", "recomposed": "mixing",
    "FewShotError": "fewshot", "FewShotSet": "fewshot", "PopulationEvaluator": "fewshot", "AdaptResult": "fewshot",
    "few_shot_adapt": "fewshot", "use_precision": "fewshot", "PRECISIONS": "fewshot",
    "SelfAdaptiveModel": "self_adaptive", "classifier_data": "self_adaptive",
    "train_expert": "train", "exact_match_reward": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
