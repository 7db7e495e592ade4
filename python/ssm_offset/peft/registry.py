"""One registry: a method's `peft_type` → its config class and the function that adds it to a model.

Adding a method touches its own module and one line here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Type

from . import additional_scan, bitfit, lora, sdt, state, svf
from .config import AdapterError, PeftConfig
from .virtual_tokens import PrefixTuningConfig, PromptTuningConfig


@dataclass
class FullFineTuningConfig(PeftConfig):
    """Every base parameter trains; the 'adapter' file holds the whole model."""

    peft_type = "FULL"


@dataclass(frozen=True)
class Method:
    config: Type[PeftConfig]
    inject: Optional[Callable]  # None: handled by the PeftModel itself (virtual tokens, full fine-tuning)
    can_merge: bool


METHODS: Dict[str, Method] = {
    "STATE_OFFSET": Method(state.StateOffsetConfig, state.inject_state_offset, False),
    "INITIAL_STATE": Method(state.InitialStateConfig, state.inject_initial_state, False),
    "LORA": Method(lora.LoraConfig, lora.inject, True),
    "BITFIT": Method(bitfit.BitFitConfig, bitfit.inject, True),
    "ADDITIONAL_SCAN": Method(additional_scan.AdditionalScanConfig, additional_scan.inject, False),
    "SDT": Method(sdt.SDTConfig, sdt.inject, True),
    "SVF": Method(svf.SVFConfig, svf.inject, True),
    "PROMPT_TUNING": Method(PromptTuningConfig, None, False),
    "PREFIX_TUNING": Method(PrefixTuningConfig, None, False),
    "FULL": Method(FullFineTuningConfig, None, True),
}

#: the names the command line and the comparison table use, each with the config it stands for
SHORT_NAMES: Dict[str, Callable[[], PeftConfig]] = {
    "state-offset-h": lambda: state.StateOffsetConfig(variant="h"),
    "state-offset-y": lambda: state.StateOffsetConfig(variant="y"),
    "initial-state": state.InitialStateConfig,
    "prompt": PromptTuningConfig,
    "prefix": PrefixTuningConfig,
    "lora-s6": lambda: lora.LoraConfig(target_modules=["x_proj", "dt_proj"]),
    "lora-inout": lambda: lora.LoraConfig(target_modules=["in_proj", "out_proj"]),
    "bitfit": bitfit.BitFitConfig,
    "sdt": sdt.SDTConfig,
    "svf": svf.SVFConfig,
    "additional-scan": additional_scan.AdditionalScanConfig,
    "full": FullFineTuningConfig,
}


def method(peft_type: str, source: str = "config") -> Method:
    if peft_type not in METHODS:
        raise AdapterError(f"{source}: field 'peft_type' is {peft_type!r}; accepted values: {sorted(METHODS)}")
    return METHODS[peft_type]


def config_class(peft_type: str, source: str = "config") -> Type[PeftConfig]:
    return method(peft_type, source).config


def config_for(short_name: str) -> PeftConfig:
    if short_name not in SHORT_NAMES:
        raise AdapterError(f"unknown method {short_name!r}; accepted: {sorted(SHORT_NAMES)}")
    return SHORT_NAMES[short_name]()
