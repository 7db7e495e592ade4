"""Linear mixtures of experts: Transformer²'s z' = Σ_k α_k z_k, and the same for state offsets
(h' = Σ_k α_k h'_k), y offsets, initial states and LoRA (Σ_k α_k s_k B_k A_k).

Three faces of one mixture, which the tests hold equal:

    add_weighted_adapter(model, names, alpha, "mix")     a new adapter holding the mixture (plain API)
    model.row_adapters(names, mixture_weights(...))      each batch row its own mixture, no weight rebuilt
    recomposed(model, names, alpha)                      the reference way: rebuild the mixed weights, then run

`alpha` is K weights (one per expert), or (G, K) for G groups of adapter layers (`mixing_groups`: one α per
expert per block, or per matrix, as the paper's "one α per expert per matrix").
"""
from __future__ import annotations

import contextlib
import copy
import re
from typing import Callable, Dict, Iterator, List, Sequence, Union

import torch

from ..peft import AdapterError, LoraConfig, PeftModel
from ..peft.layer import AdapterLayer, saved_key
from ..peft.lora import LoraLinear
from ..peft.state import KINDS, SSMStateAdapter
from ..peft.svf import SVFLinear

__all__ = ["mixing_groups", "mixture_weights", "add_weighted_adapter", "recomposed", "GRANULARITIES"]

GRANULARITIES = ("expert", "layer", "matrix")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")

Alpha = Union[Sequence[float], torch.Tensor]


def _layers(model: PeftModel, names: Sequence[str]) -> Dict[str, AdapterLayer]:
    """Adapter layers holding the experts (all of them, or an error: a mixture needs one method)."""
    if not names:
        raise AdapterError("a mixture needs at least one adapter")
    for n in names:
        model._check_name(n)
    types = {model.peft_config[n].peft_type for n in names}
    if len(types) != 1:
        raise AdapterError(f"adapters {list(names)} are of different methods {sorted(types)}; a mixture needs one")
    out = {}
    for path, layer in model.adapter_layers().items():
        held = set(names) & set(layer.adapter_names())
        if held and held != set(names):
            raise AdapterError(f"{path}: adapters {sorted(set(names) - held)} have no entry here; experts of one "
                               "method must adapt the same layers to be mixed")
        if held:
            out[path] = layer
    return out


def mixing_groups(model: PeftModel, names: Sequence[str], granularity: str = "expert") -> List[List[str]]:
    """Adapter layer paths grouped by what shares one α per expert: "expert" (one group), "layer" (one
    group per residual block) or "matrix" (one group per adapter layer: SVF/LoRA per matrix)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: got {granularity!r}, expected one of {list(GRANULARITIES)}")
    paths = list(_layers(model, names))
    if granularity == "expert":
        return [paths]
    if granularity == "matrix":
        return [[p] for p in paths]
    groups: Dict[str, List[str]] = {}
    for p in paths:
        m = _BLOCK.search(p)
        groups.setdefault(m.group(1) if m else p, []).append(p)
    return list(groups.values())


def _alpha_table(alpha: Alpha, k: int, n_groups: int) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.dim() == 1:
        a = a.unsqueeze(0)
    if a.shape == (1, k) and n_groups > 1:
        a = a.expand(n_groups, k)
    if a.shape != (n_groups, k):
        raise ValueError(f"alpha: got shape {tuple(a.shape)}, expected ({k},) or ({n_groups}, {k})")
    return a


def mixture_weights(alphas: torch.Tensor, groups: List[List[str]], repeat: int = 1
                    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """Row weights for `PeftModel.row_adapters` from a population `alphas` (P, G·K) (group-major: the K weights
    of group 0, then group 1 …): each candidate's row repeated `repeat` times (one per example).
    One group gives a (P·repeat, K) tensor; several give {layer path: (P·repeat, K)}."""
    p, d = alphas.shape
    g = len(groups)
    if d % g:
        raise ValueError(f"alphas: {d} columns do not split into {g} groups")
    w = alphas.view(p, g, d // g)
    if repeat > 1:
        w = w.repeat_interleave(repeat, dim=0)
    if g == 1:
        return w[:, 0]
    return {path: w[:, i] for i, group in enumerate(groups) for path in group}


def _rename(pname: str, old: str, new: str) -> str:
    parts = pname.split(".")
    parts[parts.index(old)] = new
    return ".".join(parts)


def _mixed_tensors(layer: AdapterLayer, names: Sequence[str], a: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{parameter name with `names[0]` standing for the adapter: Σ_k a_k tensor_k} for the linear methods."""
    sd = layer.state_dict(keep_vars=True)
    out = {}
    for pname, t in sd.items():
        if saved_key(pname, names[0]) is None:
            continue
        parts = pname.split(".")
        i = parts.index(names[0])
        mixed = torch.zeros_like(t)
        for k, n in enumerate(names):
            parts[i] = n
            mixed += a[k].to(t.dtype) * sd[".".join(parts)].detach()
        out[pname] = mixed
    return out


@torch.no_grad()
def add_weighted_adapter(model: PeftModel, adapters: Sequence[str], weights: Alpha, adapter_name: str,
                         granularity: str = "expert") -> None:
    """Add adapter `adapter_name` = Σ_k weights[k] · adapter_k (Hugging Face peft's `add_weighted_adapter`,
    combination "linear"; for LoRA the exact "cat": ranks concatenated, so its update is Σ_k w_k s_k B_k A_k).
    `weights`: K floats, or (G, K) with G the number of `mixing_groups(model, adapters, granularity)`."""
    names = list(adapters)
    layers = _layers(model, names)
    groups = mixing_groups(model, names, granularity)
    table = _alpha_table(weights, len(names), len(groups))
    row = {path: table[i] for i, group in enumerate(groups) for path in group}
    config = copy.deepcopy(model.peft_config[names[0]])
    lora = config.peft_type == "LORA"
    if lora:
        cfgs = [model.peft_config[n] for n in names]
        if len({tuple(c.target_modules or ()) for c in cfgs}) != 1:
            raise AdapterError("LoRA experts with different target_modules cannot be mixed")
        r = sum(c.r for c in cfgs)
        config = LoraConfig(target_modules=list(cfgs[0].target_modules), r=r, lora_alpha=r, lora_dropout=0.0,
                            layers_to_transform=cfgs[0].layers_to_transform)
    elif config.peft_type not in ("STATE_OFFSET", "INITIAL_STATE", "SVF"):
        raise AdapterError(f"{config.peft_type} adapters do not mix linearly; mixable: STATE_OFFSET, INITIAL_STATE, "
                           "SVF, LORA")
    config.inference_mode = True
    model.add_adapter(adapter_name, config)
    for path, layer in layers.items():
        a = row[path]
        if isinstance(layer, LoraLinear):
            # cat: A = [A_1; …; A_K], B = [w_1 s_1 B_1, …, w_K s_K B_K], scaling 1 (alpha = r)
            layer.lora_A[adapter_name].weight.copy_(torch.cat([layer.lora_A[n].weight for n in names], 0))
            layer.lora_B[adapter_name].weight.copy_(torch.cat(
                [a[k].item() * layer.scaling[n] * layer.lora_B[n].weight for k, n in enumerate(names)], 1))
            continue
        sd = layer.state_dict(keep_vars=True)
        for pname, t in _mixed_tensors(layer, names, a).items():
            sd[_rename(pname, names[0], adapter_name)].copy_(t)
    model.set_adapter(adapter_name)


@contextlib.contextmanager
def recomposed(model: PeftModel, adapters: Sequence[str], granularity: str = "expert",
               scratch: str = "_recomposed") -> Iterator[Callable[[Alpha], None]]:
    """The reference way (Transformer²'s implementation), for the benchmark's sequential arm: yields
    `apply(alpha)`, which rebuilds one mixture into weights — SVF W' = U diag(σ⊙z'·s) Vᵀ (the cached SVD
    factors) and LoRA W + Σ α_k s_k B_k A_k written into the base linear layers, state tensors into a scratch
    adapter — after which the model runs that mixture. Base weights are saved once and restored on exit."""
    names = list(adapters)
    layers = _layers(model, names)
    groups = mixing_groups(model, names, granularity)
    state_layers = {p: l for p, l in layers.items() if isinstance(l, SSMStateAdapter)}
    if state_layers and scratch not in model.peft_config:
        config = copy.deepcopy(model.peft_config[names[0]])
        config.inference_mode = True
        active = model.active_adapter
        model.add_adapter(scratch, config)
        model.set_adapter(active)
    saved = {p: l.base_layer.weight.detach().clone() for p, l in layers.items() if p not in state_layers}
    before = {p: (l.active, l.disabled) for p, l in layers.items()}

    @torch.no_grad()
    def apply(alpha: Alpha) -> None:
        table = _alpha_table(alpha, len(names), len(groups))
        for i, group in enumerate(groups):
            a = table[i]
            for path in group:
                layer = layers[path]
                if isinstance(layer, SVFLinear):
                    z = sum(a[k].to(layer.S.dtype) * layer.z[n] for k, n in enumerate(names))
                    w = (layer.U * layer.scaled_singular_values(z)) @ layer.Vh
                elif isinstance(layer, LoraLinear):
                    w = saved[path].float() + sum(
                        a[k].item() * layer.scaling[n] * (layer.lora_B[n].weight.float() @ layer.lora_A[n].weight.float())
                        for k, n in enumerate(names))
                else:
                    for kind in KINDS:
                        store = getattr(layer, kind)
                        if names[0] in store:
                            store[scratch].copy_(sum(a[k].to(store[n].dtype) * store[n] for k, n in enumerate(names)))
                    layer.active = scratch
                    continue
                layer.base_layer.weight.copy_(w.to(layer.base_layer.weight.dtype))
                layer.disabled = True

    try:
        yield apply
    finally:
        with torch.no_grad():
            for path, w in saved.items():
                layers[path].base_layer.weight.copy_(w)
        for path, (active, disabled) in before.items():
            layers[path].active, layers[path].disabled = active, disabled
