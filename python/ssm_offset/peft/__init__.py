"""State-based PEFT for SSMs and the baselines they are compared with, behind Hugging Face peft's API.

    StateOffsetConfig(variant="h"|"y")   State-offset Tuning (Kang et al. 2025)
    InitialStateConfig                   Initial State Tuning
    PromptTuningConfig, PrefixTuningConfig
    LoraConfig, BitFitConfig, SDTConfig, SVFConfig, AdditionalScanConfig, FullFineTuningConfig
    get_peft_model, PeftModel            the API (see model.py)
Each method is one module; `registry.METHODS` maps peft_type → config and injector.
"""
from .additional_scan import AdditionalScanConfig
from .bitfit import BitFitConfig
from .config import AdapterError, PeftConfig, load_config
from .lora import LoraConfig
from .model import PeftModel, get_peft_model
from .registry import METHODS, SHORT_NAMES, FullFineTuningConfig, config_for
from .sdt import SDTConfig
from .state import InitialStateConfig, StateOffsetConfig
from .svf import SVFConfig
from .virtual_tokens import PrefixTuningConfig, PromptTuningConfig

__all__ = [
    "AdapterError", "PeftConfig", "load_config", "PeftModel", "get_peft_model", "METHODS", "SHORT_NAMES",
    "config_for", "StateOffsetConfig", "InitialStateConfig", "PromptTuningConfig", "PrefixTuningConfig",
    "LoraConfig", "BitFitConfig", "SDTConfig", "SVFConfig", "AdditionalScanConfig", "FullFineTuningConfig",
]
