"""Model configurations as plain data, and the one parser for each on-disk config dialect.

Field names and defaults are those of transformers' `MambaConfig` / `Mamba2Config`, so a Hugging Face
`config.json` maps field for field and one saved by ssm-offset loads in transformers. Two dialects are read:

- Hugging Face (`model_type` "mamba" / "mamba2" / "transmamba"): `config_from_hf_dict`.
- mamba_ssm's `MambaLMHeadModel` (`d_model`, `n_layer`, `ssm_cfg`, ...): `config_from_mamba_ssm_dict`.

Nothing is silently dropped: a field is either used, checked against what the model implements, or on an
explicit list of fields known not to affect the forward pass (initialisation ranges, runtime switches of
transformers). Anything else is an error naming the field.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

TokenIds = Union[int, List[int], None]


class ConfigError(ValueError):
    """A config field is unknown, missing, or has a value the models do not implement."""


# Fields transformers writes that do not change what the model computes: weight-initialisation settings,
# runtime switches (kernel fallbacks, caching), and bookkeeping. Accepted and not stored.
_HF_IRRELEVANT = frozenset({
    "transformers_version", "dtype", "torch_dtype", "_name_or_path", "use_cache", "output_hidden_states",
    "output_attentions", "return_dict", "initializer_range", "rescale_prenorm_residual", "time_step_min",
    "time_step_max", "time_step_floor", "time_step_scale", "time_step_init_scheme", "use_mambapy",
    "use_associative_scan", "id2label", "label2id", "problem_type", "tokenizer_class", "chunk_size_feed_forward",
    "is_encoder_decoder", "pruned_heads", "torchscript", "task_specific_params", "finetuning_task",
    # mamba_ssm settings that early `-hf` conversions left in config.json (weights are already padded/fused-agnostic)
    "fused_add_norm", "pad_vocab_size_multiple",
    # written by some Mamba-2 `-hf` configs; transformers' Mamba2 never reads it (it always gates before the norm)
    "norm_before_gate",
})

# Early `-hf` conversions also kept mamba_ssm's names next to the transformers ones: accepted when they agree.
_HF_LEGACY_ALIASES = {"d_model": "hidden_size", "n_layer": "num_hidden_layers", "d_inner": "intermediate_size"}


@dataclass
class _SSMConfig:
    model_type: ClassVar[str]
    architecture: ClassVar[str]

    def validate(self) -> None:
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act: got {self.hidden_act!r}, the models implement only 'silu'")
        for name in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand", "conv_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: got {value!r}, expected a positive integer")

    @property
    def intermediate_size(self) -> int:
        return int(self.expand * self.hidden_size)

    def to_hf_dict(self) -> Dict[str, Any]:
        """The config as transformers' `config.json` spells it."""
        d = asdict(self)
        d["model_type"] = self.model_type
        d["architectures"] = [self.architecture]
        return d

    @classmethod
    def _from_fields(cls, values: Dict[str, Any], source: str):
        try:
            cfg = cls(**values)
        except TypeError as e:  # a required field absent
            raise ConfigError(f"{source}: {e}") from None
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        return cfg


@dataclass
class MambaConfig(_SSMConfig):
    """Mamba-1 (S6) language model; `intermediate_size` = expand · hidden_size channels per mixer."""

    model_type: ClassVar[str] = "mamba"
    architecture: ClassVar[str] = "MambaForCausalLM"

    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: Union[int, str] = "auto"
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: Optional[int] = 0
    bos_token_id: Optional[int] = 0
    eos_token_id: TokenIds = 0

    def __post_init__(self):
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.time_step_rank, int) or self.time_step_rank < 1:
            raise ConfigError(f"time_step_rank: got {self.time_step_rank!r}, expected 'auto' or a positive integer")

    def to_hf_dict(self) -> Dict[str, Any]:
        d = super().to_hf_dict()
        d["intermediate_size"] = self.intermediate_size
        return d


@dataclass
class Mamba2Config(_SSMConfig):
    """Mamba-2 (SSD) language model: `num_heads` heads of `head_dim` channels (= expand · hidden_size in all),
    B and C shared by `n_groups` groups of heads, gated RMSNorm per group before `out_proj`."""

    model_type: ClassVar[str] = "mamba2"
    architecture: ClassVar[str] = "Mamba2ForCausalLM"

    vocab_size: int = 32768
    hidden_size: int = 4096
    state_size: int = 128
    num_hidden_layers: int = 64
    num_heads: int = 128
    head_dim: int = 64
    n_groups: int = 8
    expand: int = 2
    conv_kernel: int = 4
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    time_step_limit: Tuple[float, float] = (0.0, math.inf)
    chunk_size: int = 256
    tie_word_embeddings: bool = False
    time_step_rank: Union[int, str] = "auto"  # unused by Mamba-2 (dt comes from in_proj); kept for round trips
    pad_token_id: Optional[int] = 1
    bos_token_id: Optional[int] = 0
    eos_token_id: TokenIds = 2

    def __post_init__(self):
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        self.time_step_limit = tuple(_json_float(v) for v in self.time_step_limit)

    def validate(self) -> None:
        super().validate()
        for name in ("num_heads", "head_dim", "n_groups", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
        if self.num_heads * self.head_dim != self.intermediate_size:
            raise ConfigError(
                f"num_heads * head_dim ({self.num_heads} * {self.head_dim}) must equal expand * hidden_size "
                f"({self.expand} * {self.hidden_size})"
            )
        if self.num_heads % self.n_groups:
            raise ConfigError(f"n_groups: {self.n_groups} groups do not divide num_heads={self.num_heads}")
        if len(self.time_step_limit) != 2 or not self.time_step_limit[0] <= self.time_step_limit[1]:
            raise ConfigError(f"time_step_limit: got {self.time_step_limit!r}, expected [min, max] with min <= max")

    def to_hf_dict(self) -> Dict[str, Any]:
        d = super().to_hf_dict()
        d["time_step_limit"] = list(self.time_step_limit)
        return d


def geometric_transpoints(length: int, n: int = 8) -> List[int]:
    """TransMamba's schedule shape scaled to a training length: [0, length/2^(n-2), ..., length/2, length].

    At length 8192 and n = 8 this is the paper's best schedule [0, 128, 256, 512, 1024, 2048, 4096, 8192]:
    one layer in eight is pure Mamba-2, one is pure attention, the rest switch at doubling positions.
    """
    if not isinstance(length, int) or length < 1 or not isinstance(n, int) or n < 2:
        raise ValueError(f"geometric_transpoints: got length={length!r}, n={n!r}; expected length >= 1, n >= 2")
    return [0] + [length >> k for k in range(n - 2, -1, -1)]


# the paper's schedule shape for training sequences of 1024 tokens (its 8192-token schedule divided by 8)
DEFAULT_TRANSPOINTS = tuple(geometric_transpoints(1024))


@dataclass
class TransMambaConfig(Mamba2Config):
    """TransMamba (Li et al. 2025): Mamba-2 layers whose parameters also serve as attention (Q = C, K = B,
    V = x); in layer i the tokens before its TransPoint use causal softmax attention and the rest the SSM,
    started from the attention prefix's exact SSM state (the Memory Converter).

    transpoints_train / transpoints_infer: absolute token positions, cycled over the layers (layer i uses
        schedule[i % len(schedule)]); the model uses the first in `train()` mode and the second in `eval()`
        mode. 0 is a pure Mamba-2 layer; a TransPoint at or beyond the sequence length is pure attention.
    use_rope / rope_theta: rotary position embedding on the attention path's Q and K (off by default: the
        paper's attention reuses C and B as they are; the SSM path never sees the rotation).
    """

    model_type: ClassVar[str] = "transmamba"
    architecture: ClassVar[str] = "TransMambaForCausalLM"

    transpoints_train: List[int] = field(default_factory=lambda: list(DEFAULT_TRANSPOINTS))
    transpoints_infer: List[int] = field(default_factory=lambda: list(DEFAULT_TRANSPOINTS))
    use_rope: bool = False
    rope_theta: float = 10000.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("transpoints_train", "transpoints_infer"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))

    def validate(self) -> None:
        super().validate()
        for name in ("transpoints_train", "transpoints_infer"):
            check_transpoints(getattr(self, name), name)
        if not isinstance(self.use_rope, bool):
            raise ConfigError(f"use_rope: got {self.use_rope!r}, expected true or false")
        if self.use_rope and self.state_size % 2:
            raise ConfigError(
                f"use_rope: rotary embedding needs an even state_size (the Q/K width), got {self.state_size}")
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
            raise ConfigError(f"rope_theta: got {self.rope_theta!r}, expected a positive number")


def check_transpoints(schedule: Any, name: str = "transpoints") -> List[int]:
    """A schedule is a non-empty list of non-negative integer token positions; returns it as a list."""
    ok = isinstance(schedule, (list, tuple)) and len(schedule) > 0 and all(
        isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in schedule)
    if not ok:
        raise ConfigError(f"{name}: got {schedule!r}, expected a non-empty list of non-negative integers "
                          "(absolute token positions, cycled over the layers)")
    return list(schedule)


CONFIG_CLASSES = {c.model_type: c for c in (MambaConfig, Mamba2Config, TransMambaConfig)}
SSMConfig = Union[MambaConfig, Mamba2Config, TransMambaConfig]


def _json_float(v: Any) -> float:
    """transformers 5 writes infinities as {"__float__": "Infinity"}; older files use the bare token Infinity."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"])
    return float(v)


def config_from_hf_dict(d: Dict[str, Any], source: str = "config.json") -> SSMConfig:
    """Parse a Hugging Face `config.json` dict; `source` names the file in errors."""
    model_type = d.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(
            f"{source}: field 'model_type' is {model_type!r}; accepted values: "
            + ", ".join(repr(k) for k in CONFIG_CLASSES)
        )
    cls = CONFIG_CLASSES[model_type]
    archs = d.get("architectures")
    if archs is not None and list(archs) != [cls.architecture]:
        raise ConfigError(
            f"{source}: field 'architectures' is {archs!r}; accepted for model_type {model_type!r}: "
            f"[{cls.architecture!r}] (a causal LM with its LM head)"
        )
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in d.items() if k in known}
    unknown = sorted(k for k in d if k not in known and k not in _HF_IRRELEVANT and k not in _HF_LEGACY_ALIASES
                     and k not in ("model_type", "architectures", "intermediate_size", "rms_norm", "ssm_cfg"))
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {unknown} for model_type {model_type!r}; known fields: {sorted(known)}"
        )
    cfg = cls._from_fields(values, source)
    resolved = {**asdict(cfg), "intermediate_size": cfg.intermediate_size}
    for legacy, name in [*_HF_LEGACY_ALIASES.items(), ("intermediate_size", "intermediate_size")]:
        if legacy in d and d[legacy] != resolved[name]:
            raise ConfigError(f"{source}: field {legacy!r} is {d[legacy]!r} but the config implies {resolved[name]!r}")
    if d.get("rms_norm", True) is not True:
        raise ConfigError(f"{source}: field 'rms_norm' is {d['rms_norm']!r}; the models implement only RMSNorm (true)")
    if d.get("ssm_cfg", {}):
        raise ConfigError(f"{source}: field 'ssm_cfg' is {d['ssm_cfg']!r}; a Hugging Face config must leave it empty")
    return cfg


# mamba_ssm's MambaConfig (models/config_mamba.py) and the Mamba / Mamba2 layer arguments, with their defaults.
_MAMBA_SSM_TOP = {
    "d_model": None, "d_intermediate": 0, "n_layer": None, "vocab_size": None, "ssm_cfg": {},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 8, "tie_embeddings": True,
}
_MAMBA_SSM_LAYER = {
    "Mamba1": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "conv_bias": True, "bias": False},
    "Mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "d_ssm": None,
               "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False, "dt_limit": (0.0, math.inf),
               "conv_bias": True, "bias": False, "chunk_size": 256},
}
# Initialisation and kernel-selection arguments: they do not change the forward pass of loaded weights.
_MAMBA_SSM_LAYER_IRRELEVANT = {
    "Mamba1": {"layer", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path"},
    "Mamba2": {"layer", "conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "use_mem_eff_path"},
}
# What the Hugging Face layout (and so these models) can express; anything else is refused by name.
_MAMBA_SSM_REQUIRED = {
    "d_intermediate": 0, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
}
_MAMBA_SSM_LAYER_REQUIRED = {"Mamba2": {"D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False}}


def config_from_mamba_ssm_dict(d: Dict[str, Any], source: str = "config.json") -> SSMConfig:
    """Parse a mamba_ssm `MambaLMHeadModel` config; the vocabulary is padded as mamba_ssm pads it."""
    unknown = sorted(set(d) - set(_MAMBA_SSM_TOP))
    if unknown:
        raise ConfigError(f"{source}: unknown mamba_ssm field(s) {unknown}; known: {sorted(_MAMBA_SSM_TOP)}")
    top = {**_MAMBA_SSM_TOP, **d}
    for name in ("d_model", "n_layer", "vocab_size"):
        if top[name] is None:
            raise ConfigError(f"{source}: mamba_ssm field {name!r} is missing")
    for name, want in _MAMBA_SSM_REQUIRED.items():
        if top[name] != want:
            raise ConfigError(f"{source}: field {name!r} is {top[name]!r}; only {want!r} is supported")
    ssm_cfg = dict(top["ssm_cfg"] or {})
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer not in _MAMBA_SSM_LAYER:
        raise ConfigError(
            f"{source}: field 'ssm_cfg.layer' is {layer!r}; accepted values: "
            + ", ".join(repr(k) for k in _MAMBA_SSM_LAYER)
        )
    unknown = sorted(set(ssm_cfg) - set(_MAMBA_SSM_LAYER[layer]) - _MAMBA_SSM_LAYER_IRRELEVANT[layer])
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) in 'ssm_cfg' for layer {layer!r}: {unknown}")
    s = {**_MAMBA_SSM_LAYER[layer], **ssm_cfg}
    for name, want in _MAMBA_SSM_LAYER_REQUIRED.get(layer, {}).items():
        if s[name] != want:
            raise ConfigError(f"{source}: field 'ssm_cfg.{name}' is {s[name]!r}; only {want!r} is supported")
    multiple = int(top["pad_vocab_size_multiple"])
    vocab = int(top["vocab_size"])
    if multiple > 1 and vocab % multiple:
        vocab += multiple - vocab % multiple
    common = dict(
        vocab_size=vocab, hidden_size=top["d_model"], state_size=s["d_state"], num_hidden_layers=top["n_layer"],
        expand=s["expand"], conv_kernel=s["d_conv"], use_bias=s["bias"], use_conv_bias=s["conv_bias"],
        residual_in_fp32=top["residual_in_fp32"], tie_word_embeddings=top["tie_embeddings"],
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )
    if layer == "Mamba1":
        return MambaConfig._from_fields({**common, "time_step_rank": s["dt_rank"]}, source)
    d_inner = s["expand"] * top["d_model"]
    if s["d_ssm"] is not None and s["d_ssm"] != d_inner:
        raise ConfigError(f"{source}: field 'ssm_cfg.d_ssm' is {s['d_ssm']!r}; only None or expand * d_model "
                          f"({d_inner}) is supported (no extra MLP channels in in_proj)")
    if d_inner % s["headdim"]:
        raise ConfigError(f"{source}: ssm_cfg.headdim={s['headdim']} does not divide expand * d_model = {d_inner}")
    return Mamba2Config._from_fields({
        **common, "num_heads": d_inner // s["headdim"], "head_dim": s["headdim"], "n_groups": s["ngroups"],
        "time_step_limit": tuple(s["dt_limit"]), "chunk_size": s["chunk_size"],
    }, source)


__all__ = [
    "ConfigError", "MambaConfig", "Mamba2Config", "TransMambaConfig", "SSMConfig", "CONFIG_CLASSES",
    "DEFAULT_TRANSPOINTS", "geometric_transpoints", "check_transpoints",
    "config_from_hf_dict", "config_from_mamba_ssm_dict",
]
