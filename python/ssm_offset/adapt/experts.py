"""The expert library: PEFT adapters kept in the Rust adapter store (`ssm_offset.store.AdapterStore`) with
the task they were trained for, their metrics and the fingerprint of the base model they belong to.

    save_expert(store, peft_model, "sst2", task="sentiment", metrics={"accuracy": 0.81})
    peft = load_experts(base_model, store)              # every expert of this base, as named adapters
    peft = load_experts(base_model, store, ["sst2", "cola"])

An expert only means something on the base model it was trained on: loading one whose fingerprint differs
from the model's is an error naming both (a different checkpoint of the same shape differs too: the
fingerprint samples the weights).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..peft import AdapterError, PeftModel, get_peft_model
from ..peft.registry import config_class
from ..store import AdapterStore, base_fingerprint

__all__ = ["ExpertError", "model_fingerprint", "save_expert", "load_experts", "list_experts", "MIXABLE"]

#: methods whose experts mix linearly per batch row (state tensors, SVF z-vectors, LoRA updates)
MIXABLE = ("STATE_OFFSET", "INITIAL_STATE", "SVF", "LORA")

# state-dict components that belong to adapters, not to the base model (SVF/LoRA wrappers keep the base
# linear as `base_layer`; BitFit/SDT parametrize the base weight, keeping it as `original`)
_ADAPTER_PARTS = {"ssm_adapter", "lora_A", "lora_B", "lora_dropout", "z", "delta", "masks"}


class ExpertError(ValueError):
    """An expert or expert store that cannot be used as asked: the message says which and why."""


def _store(store: Union[AdapterStore, str], create: bool = False) -> AdapterStore:
    return store if isinstance(store, AdapterStore) else AdapterStore(store, create=create)


def base_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The base model's own tensors under their plain names, whatever adapters wrap it."""
    m = model.base_model if isinstance(model, PeftModel) else model
    out = {}
    for name, t in m.state_dict().items():
        parts = name.split(".")
        if _ADAPTER_PARTS & set(parts):
            continue
        if "parametrizations" in parts:  # ...parametrizations.weight.original -> ...weight
            i = parts.index("parametrizations")
            if parts[-1] != "original":
                continue
            parts = parts[:i] + [parts[i + 1]]
        out[".".join(p for p in parts if p != "base_layer")] = t
    return out


def model_fingerprint(model: nn.Module) -> str:
    """The Rust store's fingerprint of the base model under `model` (config + names, shapes, sampled weights)."""
    config = model.config
    config = config.to_hf_dict() if hasattr(config, "to_hf_dict") else config
    return base_fingerprint(config, base_state_dict(model))


def save_expert(
    store: Union[AdapterStore, str],
    model: PeftModel,
    name: str,
    *,
    adapter: Optional[str] = None,
    task: Optional[str] = None,
    tags: Iterable[str] = (),
    metrics: Optional[Mapping[str, Any]] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = True,
) -> Dict[str, Any]:
    """Store adapter `adapter` of `model` (default: the adapter called `name`, else the active one) as expert
    `name`, tagged with `task`."""
    if not name.isidentifier():
        raise ExpertError(f"expert name {name!r}: use a Python identifier (it becomes an adapter name)")
    adapter = adapter or (name if name in model.peft_config else model.active_adapter)
    if adapter not in model.peft_config:
        raise ExpertError(f"the model has no adapter {adapter!r}; adapters: {sorted(model.peft_config)}")
    config = model.peft_config[adapter]
    tensors = {k: v.detach() for k, v in model.adapter_state_dict(adapter).items()}
    meta = dict(metadata or {})
    if task is not None:
        meta["task"] = task
    cfg = config.to_dict()
    cfg["inference_mode"] = True
    return _store(store, create=True).put(
        name, tensors, config=cfg, metadata=meta, method=config.peft_type,
        base_fingerprint=model_fingerprint(model), tags=[*(() if task is None else [task]), *tags],
        metrics=metrics, overwrite=overwrite, check_finite=True,
    )


def list_experts(store: Union[AdapterStore, str], model: Optional[nn.Module] = None,
                 tag: Optional[str] = None) -> List[Dict[str, Any]]:
    """Index entries of the store (only those built for `model`'s base when given), each with its `task`."""
    fp = None if model is None else model_fingerprint(model)
    entries = _store(store).list(tag=tag, base_fingerprint=fp)
    for e in entries:
        e["task"] = (e.get("metadata") or {}).get("task")
    return entries


def load_experts(
    model: nn.Module,
    store: Union[AdapterStore, str],
    names: Optional[Sequence[str]] = None,
    *,
    tag: Optional[str] = None,
    methods: Sequence[str] = MIXABLE,
) -> PeftModel:
    """Add experts `names` (default: every expert in the store, or those tagged `tag`) to `model` as adapters of
    the same names; returns the PeftModel (a plain model is wrapped). The first expert is left active.

    Errors: an empty store (or no expert matching), an unknown name, an expert of another base model
    (fingerprint mismatch), an expert of a method that does not mix, an expert whose tensors do not fit."""
    st = _store(store)
    entries = {e["name"]: e for e in st.list(tag=tag)}
    if not entries:
        what = f"no expert tagged {tag!r}" if tag else "no experts"
        raise ExpertError(f"the expert store at {st.root} holds {what}; add some with save_expert or "
                          "`ssm-offset experts add`")
    names = sorted(entries) if names is None else list(names)
    if not names:
        raise ExpertError("no expert names given")
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise ExpertError(f"no expert(s) {unknown} in the store at {st.root}; it holds {sorted(entries)}")
    fp = model_fingerprint(model)
    for n in names:
        e = entries[n]
        if e.get("base_fingerprint") != fp:
            raise ExpertError(
                f"expert {n!r} was trained on another base model: its base fingerprint is "
                f"{e.get('base_fingerprint')}, this model's is {fp}. Load the base model it was trained on."
            )
        if e.get("method") not in methods:
            raise ExpertError(f"expert {n!r} is a {e.get('method')} adapter; accepted here: {list(methods)}")
    peft = model if isinstance(model, PeftModel) else None
    for n, (tensors, config, _) in zip(names, st.get_many(names)):
        cfg = config_class(config.get("peft_type", entries[n]["method"]), f"expert {n!r}").from_dict(
            config, f"expert {n!r}")
        cfg.inference_mode = True
        if peft is None:
            peft = get_peft_model(model, cfg, adapter_name=n)
        else:
            if n in peft.peft_config:
                raise ExpertError(f"the model has an adapter named {n!r} already")
            peft.add_adapter(n, cfg)
        try:
            peft.load_adapter_state(n, tensors, source=f"expert {n!r}")
        except AdapterError as exc:
            raise ExpertError(str(exc)) from None
    peft.set_adapter(names[0])
    return peft
