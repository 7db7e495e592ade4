"""`PeftModel`: a base model plus named adapters, with the API users know from Hugging Face peft.

    get_peft_model(model, config)            wrap (ssm-offset's models, or transformers' Mamba / Mamba-2)
    PeftModel.from_pretrained(base, dir)     load adapter_config.json + adapter_model.safetensors
    .save_pretrained(dir)                    write them (atomically; extra adapters in dir/<name>/)
    .add_adapter / .set_adapter / .delete_adapter / .load_adapter / .load_adapter_state
    .disable_adapter()                       context manager: the base model's outputs
    .row_adapters(names[, weights])          context manager: each batch row its own adapter or mixture
    .merge_and_unload()                      LoRA, BitFit, SVF, SDT, full; an error naming the others
    .print_trainable_parameters()
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..models import CausalLM, from_transformers
from . import delta as delta_mod
from . import state
from .config import AdapterError, PeftConfig, load_config
from .layer import AdapterLayer, adapter_state, set_rows
from .lora import LoraLinear
from .registry import method
from .svf import SVFLinear
from .virtual_tokens import VirtualTokens, add_prefix, add_prompt, prefix_cache

ADAPTER_FILE = "adapter_model.safetensors"
_RESERVED = {"base_layer", "weight", "bias", "original", "delta", "masks", "z", "prompt", "prefix"}


def _as_ssm_offset_model(model: nn.Module) -> CausalLM:
    if isinstance(model, CausalLM):
        return model
    if type(model).__module__.startswith("transformers.") and type(model).__name__ in (
        "MambaForCausalLM", "Mamba2ForCausalLM",
    ):
        return from_transformers(model)
    raise TypeError(
        f"get_peft_model: {type(model).__name__} is neither an ssm-offset model nor transformers' "
        "MambaForCausalLM / Mamba2ForCausalLM"
    )


class PeftModel(nn.Module):
    def __init__(self, model: nn.Module, config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        self.base_model = _as_ssm_offset_model(model)
        self.virtual_tokens = VirtualTokens()
        self.peft_config: Dict[str, PeftConfig] = {}
        self.active_adapter: Optional[str] = None
        for p in self.base_model.parameters():
            p.requires_grad_(False)
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_model"), name)

    # -- adapters ---------------------------------------------------------------------------------------------
    def adapter_layers(self) -> Dict[str, AdapterLayer]:
        return {p: m for p, m in self.named_modules() if isinstance(m, AdapterLayer)}

    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        if not adapter_name.isidentifier() or adapter_name in _RESERVED:
            raise AdapterError(f"adapter name {adapter_name!r}: use an identifier other than {sorted(_RESERVED)}")
        if adapter_name in self.peft_config:
            raise AdapterError(f"an adapter named {adapter_name!r} exists already: {sorted(self.peft_config)}")
        types = {c.peft_type for c in self.peft_config.values()}
        if "FULL" in types | {config.peft_type} and self.peft_config:
            raise AdapterError("FULL fine-tuning changes the base model itself: it cannot share a model with other adapters")
        m = method(config.peft_type)
        if m.inject is not None:
            m.inject(self.base_model, config, adapter_name)
        elif config.peft_type == "PROMPT_TUNING":
            add_prompt(self.virtual_tokens, self.base_model, config, adapter_name)
        elif config.peft_type == "PREFIX_TUNING":
            add_prefix(self.virtual_tokens, self.base_model, config, adapter_name)
        self.peft_config[adapter_name] = config
        # a new layer starts with no active adapter: give it the current one
        for layer in self.adapter_layers().values():
            layer.active = self.active_adapter

    def set_adapter(self, adapter_name: str) -> None:
        self._check_name(adapter_name)
        self.active_adapter = adapter_name
        config = self.peft_config[adapter_name]
        for p in self.parameters():
            p.requires_grad_(False)
        for layer in self.adapter_layers().values():
            layer.active = adapter_name
            if not config.inference_mode:
                for p in layer.trainable_parameters(adapter_name):
                    p.requires_grad_(True)
        if config.peft_type == "FULL" and not config.inference_mode:
            for p in self.base_model.parameters():
                p.requires_grad_(True)

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_name(adapter_name)
        for layer in self.adapter_layers().values():
            layer.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        self._drop_empty_layers()
        if self.active_adapter == adapter_name:
            rest = list(self.peft_config)
            self.active_adapter = None
            if rest:
                self.set_adapter(rest[0])

    def _check_name(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterError(f"no adapter named {adapter_name!r}; adapters: {sorted(self.peft_config)}")

    def _unwrap(self, keep: Optional[str]) -> None:
        """Remove every adapter wrapper, parametrization and hook from the base model; with `keep`, merge
        that adapter into the weights first."""
        for path, module in list(self.base_model.named_modules()):
            if isinstance(module, (LoraLinear, SVFLinear)):
                if keep is not None and keep in module.adapter_names():
                    module.merge(keep)
                parent, _, name = path.rpartition(".")
                setattr(self.base_model.get_submodule(parent) if parent else self.base_model, name, module.base_layer)
        delta_mod.remove_deltas(self.base_model, keep)
        for module in list(self.base_model.modules()):
            if hasattr(module, "ssm_adapter"):
                state.detach(module)

    def _drop_empty_layers(self) -> None:
        if not self.peft_config:
            self._unwrap(None)

    @contextlib.contextmanager
    def using_adapter(self, adapter_name: str) -> Iterator[None]:
        """Within the block `adapter_name` is the active adapter; the one active before is restored on exit."""
        active = self.active_adapter
        self.set_adapter(adapter_name)
        try:
            yield
        finally:
            self.set_adapter(active)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the model computes exactly the base model (FULL cannot: it has no base copy)."""
        if any(c.peft_type == "FULL" for c in self.peft_config.values()):
            raise AdapterError("FULL fine-tuning has no separate adapter to disable")
        layers = list(self.adapter_layers().values())
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False

    @contextlib.contextmanager
    def row_adapters(self, adapters: Sequence[str],
                     weights: Union[torch.Tensor, Mapping[str, torch.Tensor], None] = None) -> Iterator[None]:
        """Give each batch row its own adapter (`adapters`: one name per row) or its own mixture
        (`adapters`: K names, `weights`: (batch, K), row b uses Σ_k weights[b, k] · adapter_k).

        `weights` may also be a mapping {adapter layer path: (batch, K)} (paths as in `adapter_layers()`):
        each layer then mixes with its own weights (Transformer²'s one α per expert per matrix). Every layer
        that holds these adapters must be in the mapping, and all tensors must have the same shape.

        State offsets, y offsets, initial states, SVF vectors and LoRA mix this way, in one forward; each row's
        result equals running that row alone with the mixed adapter (or, for LoRA, the mixed updates).
        """
        names = list(adapters)
        for n in set(names):
            self._check_name(n)
        if weights is None:
            unique = sorted(set(names))
            weights = torch.zeros(len(names), len(unique))
            weights[torch.arange(len(names)), torch.tensor([unique.index(n) for n in names])] = 1.0
            names = unique
        per_layer = isinstance(weights, Mapping)
        shapes = {tuple(w.shape) for w in (weights.values() if per_layer else [weights])}
        if len(shapes) != 1 or any(len(s) != 2 or s[1] != len(names) for s in shapes):
            raise ValueError(f"weights: got shape(s) {sorted(shapes)}, expected (batch, {len(names)})")
        layers = {p: l for p, l in self.adapter_layers().items() if set(names) & set(l.adapter_names())}
        for path, layer in layers.items():
            missing = set(names) - set(layer.adapter_names())
            if missing:
                raise AdapterError(f"{type(layer).__name__}: adapters {sorted(missing)} have no entry here; "
                                   "row mixtures need adapters of the same method")
            if per_layer and path not in weights:
                raise AdapterError(f"weights: no entry for adapter layer {path!r}; per-layer weights need one for "
                                   f"each of {sorted(layers)}")
        if per_layer:
            unknown = sorted(set(weights) - set(layers))
            if unknown:
                raise AdapterError(f"weights: {unknown} are not adapter layers holding {names}")
        for path, layer in layers.items():
            set_rows(layer, names, weights[path] if per_layer else weights)
        try:
            yield
        finally:
            for layer in layers.values():
                set_rows(layer, None, None)

    def merge_and_unload(self) -> CausalLM:
        """Fold the active adapter into the base weights and return the plain base model."""
        config = self.peft_config[self.active_adapter]
        if not method(config.peft_type).can_merge:
            raise AdapterError(
                f"{config.peft_type} cannot be merged into the base weights (it adds state or tokens that no "
                "weight of the base model holds); keep the PeftModel, or use LORA, BITFIT, SVF, SDT or FULL"
            )
        self._unwrap(self.active_adapter)
        self.peft_config.clear()
        return self.base_model

    # -- forward and generation ---------------------------------------------------------------------------------
    def forward(self, input_ids=None, labels=None, cache=None, use_cache: bool = False, inputs_embeds=None,
                attention_mask=None, num_items_in_batch=None, **kwargs):
        """The base model's forward with the active adapter. `num_items_in_batch` is what `transformers.Trainer`
        passes to a model that takes **kwargs: the loss then is the token sum over that count (its gradient
        accumulation normalises by the whole accumulated batch)."""
        if num_items_in_batch is not None and labels is not None:
            kwargs["loss_reduction"] = "sum"
        out = self._forward(input_ids=input_ids, labels=labels, cache=cache, use_cache=use_cache,
                            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        if num_items_in_batch is not None and labels is not None:
            out["loss"] = out["loss"] / num_items_in_batch
        return out

    def _forward(self, input_ids=None, labels=None, cache=None, use_cache: bool = False, inputs_embeds=None,
                 attention_mask=None, **kwargs):
        kind = self.virtual_tokens.kind()
        fresh = cache is None or cache.is_fresh
        if kind is None or not fresh:
            return self.base_model(input_ids=input_ids, labels=labels, cache=cache, use_cache=use_cache,
                                   inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        batch = inputs_embeds.shape[0]
        if kind == "prompt":
            prompt = self.virtual_tokens.prompt[self.active_adapter]
            n = prompt.shape[0]
            inputs_embeds = torch.cat([prompt.to(inputs_embeds.dtype).expand(batch, -1, -1), inputs_embeds], 1)
            if labels is not None:
                labels = torch.cat([labels.new_full((batch, n), -100), labels], 1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], 1)
            out = self.base_model(inputs_embeds=inputs_embeds, labels=labels, cache=cache, use_cache=use_cache,
                                  attention_mask=attention_mask, **kwargs)
            if "logits" in out and not kwargs.get("logits_to_keep"):  # kept positions are the last: none is virtual
                out["logits"] = out["logits"][:, n:]
            return out
        # prefix: every layer starts from the state its virtual inputs leave
        start = prefix_cache(self.base_model, self.virtual_tokens.prefix_inputs(self.config.num_hidden_layers), batch)
        out = self.base_model(inputs_embeds=inputs_embeds, labels=labels, cache=start,
                              attention_mask=attention_mask, **kwargs)
        if cache is not None:  # the caller's (fresh) cache receives the state, as for the base model
            cache.conv, cache.ssm, cache.seqlen = start.conv, start.ssm, start.seqlen
        elif not use_cache:
            out["cache"] = None
        return out

    def generate(self, prompts, max_new_tokens: int, **kwargs):
        from ..models.generation import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    # -- parameters ---------------------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self):
        params = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # -- files --------------------------------------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str) -> Dict[str, torch.Tensor]:
        """{key in adapter_model.safetensors: tensor}; keys follow Hugging Face peft (`base_model.model.…`)."""
        if self.peft_config[adapter_name].peft_type == "FULL":
            return {f"base_model.model.{k}": v for k, v in self.base_model.state_dict(keep_vars=True).items()}
        out = {}
        for key, t in adapter_state(self.adapter_layers(), adapter_name).items():
            if key.startswith("base_model."):
                key = "base_model.model." + key[len("base_model."):]
            out[key] = t
        return out

    def save_pretrained(self, directory: Union[str, os.PathLike], selected_adapters: Optional[List[str]] = None) -> None:
        directory = Path(directory)
        for name in selected_adapters or list(self.peft_config):
            self._check_name(name)
            target = directory if name == "default" else directory / name
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.adapter_state_dict(name).items()}
            config = self.peft_config[name]

            def write(tmp: Path) -> None:
                save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
                config.save(tmp)

            _atomic_dir_write(target, write)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory, adapter_name: str = "default",
                        is_trainable: bool = False) -> "PeftModel":
        config = load_config(directory)
        config.inference_mode = not is_trainable
        peft = cls(model, config, adapter_name)
        peft.load_adapter(directory, adapter_name, is_trainable=is_trainable)
        return peft

    def load_adapter(self, directory, adapter_name: str, is_trainable: bool = False) -> None:
        directory = Path(directory)
        if adapter_name not in self.peft_config:
            config = load_config(directory)
            config.inference_mode = not is_trainable
            self.add_adapter(adapter_name, config)
        path = directory / ADAPTER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no adapter weights")
        self.load_adapter_state(adapter_name, load_file(str(path)), source=str(path))

    def load_adapter_state(self, adapter_name: str, tensors: Mapping[str, torch.Tensor], source: str = "tensors") -> None:
        """Copy `tensors` ({key of adapter_state_dict: tensor}, e.g. an expert from the adapter store) into an
        existing adapter; an error lists every missing, unexpected or misshapen tensor."""
        self._check_name(adapter_name)
        expected = self.adapter_state_dict(adapter_name)
        problems = [f"missing tensor {k} {tuple(v.shape)}" for k, v in expected.items() if k not in tensors]
        problems += [f"unexpected tensor {k} {tuple(v.shape)}" for k, v in tensors.items() if k not in expected]
        problems += [
            f"tensor {k}: file has shape {tuple(tensors[k].shape)}, this model expects {tuple(v.shape)}"
            for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape
        ]
        if problems:
            raise AdapterError(f"{source} does not fit this model:\n  " + "\n  ".join(problems))
        with torch.no_grad():
            for k, v in expected.items():
                v.copy_(tensors[k])
        self.set_adapter(self.active_adapter or adapter_name)


def _atomic_dir_write(target: Path, write) -> None:
    """Write into a fresh temporary directory beside `target`, then swap it in: a crash leaves either the old
    adapter or the new one, never a half-written directory. Subdirectories (other adapters) are kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        target.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def get_peft_model(model: nn.Module, config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    return PeftModel(model, config, adapter_name)
