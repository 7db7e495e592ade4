"""Loading and saving models: the one loader for both on-disk formats, and the Hugging Face writer.

Read:
- Hugging Face format: `config.json` with `model_type` "mamba" / "mamba2" + `model.safetensors` (or a sharded
  `model.safetensors.index.json`), transformers' key names.
- mamba_ssm format (`MambaLMHeadModel.save_pretrained`): `config.json` with `d_model`, `n_layer`, `ssm_cfg`, ...
  + `pytorch_model.bin`, read with `torch.load(weights_only=True)` (never a full unpickle); key names are the
  same except `backbone.embedding.weight`; the vocabulary is padded to `pad_vocab_size_multiple`.
- A hub id (anything that is not an existing path) is fetched with `huggingface_hub.snapshot_download`.
Write: Hugging Face format, each file written to a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .auto import model_from_config
from .base import CausalLM
from .config import ConfigError, SSMConfig, config_from_hf_dict, config_from_mamba_ssm_dict

PathLike = Union[str, os.PathLike]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_MAMBA_SSM_RENAMES = {"backbone.embedding.weight": "backbone.embeddings.weight"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class CheckpointError(ValueError):
    """A checkpoint's tensors do not match the model its config describes; the message lists every problem."""


def resolve(path_or_hub_id: PathLike) -> Path:
    """A local directory as is; otherwise a Hugging Face Hub id, downloaded (or taken from the local hub cache)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path}: expected a model directory (config.json + weights)")
        return path
    name = str(path_or_hub_id)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"{name}: no such directory, and not a Hugging Face Hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(
            f"{name!r} is not a local directory, and huggingface_hub is not installed to fetch it from the Hub "
            "(pip install 'ssm-offset[hub]', or pass a local path)"
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=["config.json", *_WEIGHT_FILES, "model-*.safetensors"]))
    except Exception as e:
        raise OSError(
            f"could not fetch {name!r} from the Hugging Face Hub (no network, HF_HUB_OFFLINE set, or no such "
            f"repository?): {type(e).__name__}: {e}"
        ) from e


def read_config(directory: Path) -> Tuple[SSMConfig, str]:
    """The model config and the checkpoint's format, "hf" or "mamba_ssm"."""
    source = directory / "config.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: missing (a model directory needs config.json)")
    try:
        d = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    if "model_type" in d:
        return config_from_hf_dict(d, str(source)), "hf"
    if "d_model" in d:
        return config_from_mamba_ssm_dict(d, str(source)), "mamba_ssm"
    raise ConfigError(
        f"{source}: neither a Hugging Face config (field 'model_type') nor a mamba_ssm config (field 'd_model')"
    )


def read_tensors(directory: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """All tensors of the checkpoint in `directory`, and the file(s) they came from (for messages)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    pickle = directory / "pytorch_model.bin"
    if single.is_file():
        return _read_safetensors(single), str(single)
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        tensors: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(directory / shard))
        absent = sorted(k for k in weight_map if k not in tensors)
        if absent:
            raise CheckpointError(f"{index}: tensors listed in weight_map but absent from their shards: {absent}")
        return tensors, str(index)
    if pickle.is_file():
        state = torch.load(pickle, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{pickle}: expected a flat state dict of tensors")
        return dict(state), str(pickle)
    raise FileNotFoundError(f"{directory}: no weights found (looked for {', '.join(_WEIGHT_FILES)})")


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def check_tensors(model: CausalLM, tensors: Dict[str, torch.Tensor], source: str) -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}  # a tied head is not listed
    tied = model.is_tied
    problems = []
    missing = [k for k in expected if k not in tensors]
    if missing:
        problems.append(f"missing: {missing}")
    unexpected = sorted(k for k in tensors if k not in expected and not (tied and k == "lm_head.weight"))
    if unexpected:
        problems.append(f"unexpected: {unexpected}")
    shapes = [f"{k}: checkpoint {tuple(t.shape)}, model {expected[k]}"
              for k, t in tensors.items() if k in expected and tuple(t.shape) != expected[k]]
    if shapes:
        problems.append("wrong shape: [" + "; ".join(shapes) + "]")
    emb = tensors.get("backbone.embeddings.weight")
    head = tensors.get("lm_head.weight")
    if tied and head is not None and emb is not None and not (head.shape == emb.shape and torch.equal(head, emb)):
        # mamba_ssm saves the tied head under both names; a head that differs would be dropped silently
        problems.append("lm_head.weight differs from backbone.embeddings.weight, but the config ties them "
                        "(tie_word_embeddings / tie_embeddings)")
    if problems:
        raise CheckpointError(f"{source}: the tensors do not match the config's model ({type(model).__name__}, "
                              f"{model.config.num_hidden_layers} layers):\n  " + "\n  ".join(problems))


def load_model(
    path_or_hub_id: PathLike, *, dtype: Optional[torch.dtype] = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> CausalLM:
    """Load a Mamba / Mamba-2 causal LM from a local directory or a hub id (either format, see module doc).

    dtype: the parameters' dtype (None keeps the checkpoint's); device: where to put them (default CPU).
    """
    directory = resolve(path_or_hub_id)
    config, fmt = read_config(directory)
    tensors, source = read_tensors(directory)
    if fmt == "mamba_ssm":
        tensors = {_MAMBA_SSM_RENAMES.get(k, k): v for k, v in tensors.items()}
    return model_from_tensors(config, tensors, source).to(device=device, dtype=dtype).eval()


def model_from_tensors(config: SSMConfig, tensors: Dict[str, torch.Tensor], source: str) -> CausalLM:
    """A model of `config` whose parameters ARE the given tensors (no copy); `source` names them in errors."""
    with torch.device("meta"):  # no throw-away random initialisation: every parameter comes from `tensors`
        model = model_from_config(config)
    check_tensors(model, tensors, source)
    tied = model.is_tied
    model.load_state_dict({k: tensors[k] for k in model.state_dict()}, strict=True, assign=True)
    if tied:  # assign=True gave the two names two parameters
        model.lm_head.weight = model.backbone.embeddings.weight
    return model


def from_transformers(hf_model) -> CausalLM:
    """ssm-offset's model over the weight tensors of a transformers `MambaForCausalLM` / `Mamba2ForCausalLM`.

    The parameters are shared, not copied: training one trains the other. ssm-offset's mixers then run every
    path (parallel, prefill, step) through the `ssm_offset.ops` scans, so adapters apply on all of them.
    """
    config = config_from_hf_dict(hf_model.config.to_dict(), source=f"{type(hf_model).__name__}.config")
    tensors = dict(hf_model.state_dict(keep_vars=True))
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    model = model_from_tensors(config, tensors, type(hf_model).__name__)
    return model.train(hf_model.training)


def save_pretrained(model: CausalLM, directory: PathLike) -> None:
    """Write `config.json` + `model.safetensors` (transformers' names; a tied head is stored once)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = json.dumps(model.config.to_hf_dict(), indent=2, sort_keys=True)
    # weights first: a config.json on disk never points at weights that are not (yet) there
    _atomic_write(directory / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(config + "\n"))


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a saved model is meant to be shared like any other file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["CheckpointError", "resolve", "read_config", "read_tensors", "check_tensors", "load_model",
           "save_pretrained"]
