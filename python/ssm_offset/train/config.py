"""The training configuration as plain data: one dataclass, read from a dict (a TOML table, flags) that may
name only fields that exist."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping


class TrainConfigError(ValueError):
    """A training setting is unknown or has a value the Trainer cannot use; the message names it."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    # budget: optimiser steps; when max_steps is 0, `epochs` passes over the data decide it
    max_steps: int = 0
    epochs: float = 1.0
    batch_size: int = 8               # examples per micro-batch per process
    grad_accum: int = 1               # micro-batches per optimiser step
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: str = "linear"          # "linear" | "cosine" | "constant", after `warmup_steps` of linear warm-up
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0         # the decay ends at lr · min_lr_ratio
    max_grad_norm: float = 1.0        # 0 turns clipping off
    precision: str = "auto"           # "auto" (bf16 on a GPU that has it, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    device: str = "auto"
    seed: int = 0
    bucket_by_length: bool = False    # batches of similar lengths (less padding); order still seeded
    eval_every: int = 0               # optimiser steps between evaluations; 0: only at the end (if eval data)
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    metric_for_best: str = "eval_loss"
    greater_is_better: bool = False
    load_best_model_at_end: bool = False  # `final` holds the weights of the best evaluation, not the last step's
    save_every: int = 0               # optimiser steps between checkpoints; 0: none
    keep_checkpoints: int = 2
    save_dtype: str = ""              # model directories (best/, final/): "" keeps the parameters' dtype | "bf16" | ...
    max_shard_size: str = ""          # model directories: "" one model.safetensors | "16MiB": shards + index (HF layout)
    resume: bool = True               # continue from the newest complete checkpoint in output_dir, if any
    log_every: int = 1
    progress: bool = True             # tqdm bar
    tensorboard: bool = True          # when tensorboard is installed
    gradient_checkpointing: bool = False
    # torch.compile the model's forward (and so its backward); the first steps, and each new batch shape,
    # pay the compilation (packing or bucketing keeps shapes few); checkpoints hold the plain model's keys
    compile: bool = False
    compile_backend: str = "inductor"  # a torch.compile backend: "inductor" | "aot_eager" (no code generation) | ...
    compile_mode: str = ""            # "" (default) | "reduce-overhead" | "max-autotune" | "max-autotune-no-cudagraphs"
    sdt_warmup_steps: int = 0         # SDT: steps of the dense ΔA_log warm-up before selecting dimensions
    distributed: str = "auto"         # under torchrun: "ddp" | "fsdp" (full fine-tuning); "auto" picks ddp

    def __post_init__(self) -> None:
        choices = {"schedule": ("linear", "cosine", "constant"), "precision": ("auto", "fp32", "bf16", "fp16"),
                   "distributed": ("auto", "ddp", "fsdp"),
                   "compile_mode": ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainConfigError(f"{name}: got {getattr(self, name)!r}, expected one of {list(allowed)}")
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name}: got {getattr(self, name)!r}, expected >= 1")
        for name in ("max_steps", "warmup_steps", "eval_every", "save_every", "early_stopping_patience",
                     "sdt_warmup_steps"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name}: got {getattr(self, name)!r}, expected >= 0")
        from ..models.io import parse_dtype, parse_size

        try:
            parse_dtype(self.save_dtype, "save_dtype")
            if self.max_shard_size:
                parse_size(self.max_shard_size, "max_shard_size")
        except ValueError as e:
            raise TrainConfigError(str(e)) from None
        if self.compile_mode and self.compile_backend != "inductor":
            raise TrainConfigError(f"compile_mode: {self.compile_mode!r} is an inductor mode; compile_backend is "
                                   f"{self.compile_backend!r}")
        if self.compile:
            import torch._dynamo

            if self.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise TrainConfigError(f"compile_backend: got {self.compile_backend!r}, expected one of "
                                       f"{sorted(torch._dynamo.list_backends(exclude_tags=()))}")
        if self.max_steps == 0 and not self.epochs > 0:
            raise TrainConfigError("set max_steps > 0 or epochs > 0")

    @classmethod
    def fields(cls) -> Dict[str, Any]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        known = cls.fields()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TrainConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        out = {}
        for k, v in values.items():
            want = type(known[k].default)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise TrainConfigError(f"{source}: {k} = {v!r}, expected a {want.__name__}")
            out[k] = v
        return cls(**out)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})


def load_toml(path: str) -> Dict[str, Any]:
    """A TOML file as a dict, with the file named in any syntax error."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise TrainConfigError(f"{path}: not valid TOML ({exc})") from None


__all__ = ["TrainConfig", "TrainConfigError", "load_toml"]
