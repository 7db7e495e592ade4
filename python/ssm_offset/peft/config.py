"""Adapter configs: one dataclass per method, stored as `adapter_config.json` (Hugging Face peft's file)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Union


class AdapterError(ValueError):
    """A bad adapter config, file or target; the message names the field, tensor or module at fault."""


@dataclass
class PeftConfig:
    """Fields every method shares. `peft_type` names the method in `adapter_config.json`."""

    peft_type: ClassVar[str] = ""
    base_model_name_or_path: Optional[str] = None
    task_type: str = "CAUSAL_LM"
    inference_mode: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"peft_type": self.peft_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "adapter_config.json") -> "PeftConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"peft_type"} - set(cls.ignored_fields()))
        if unknown:
            raise AdapterError(f"{source}: unknown field(s) {unknown} for {cls.peft_type}; known: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def ignored_fields(cls) -> List[str]:
        """Fields other tools write that do not change this method (e.g. Hugging Face peft's bookkeeping)."""
        return ["revision", "auto_mapping", "peft_version"]

    def save(self, directory: Union[str, Path]) -> None:
        Path(directory, "adapter_config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class TargetedConfig(PeftConfig):
    """A method that adapts named modules: `target_modules` are suffixes of module names (peft's rule)."""

    target_modules: Optional[List[str]] = None

    def default_targets(self) -> List[str]:
        raise NotImplementedError


def load_config(directory: Union[str, Path]) -> PeftConfig:
    from .registry import config_class

    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapter config (expected adapter_config.json beside the weights)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if "peft_type" not in d:
        raise AdapterError(f"{path}: missing field 'peft_type'")
    return config_class(d["peft_type"], str(path)).from_dict(d, str(path))


__all__ = ["AdapterError", "PeftConfig", "TargetedConfig", "load_config", "field"]
