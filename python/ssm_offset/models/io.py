"""Loading and saving models: the one loader for both on-disk formats, and the Hugging Face writer.

Read:
- Hugging Face format: `config.json` with `model_type` "mamba" / "mamba2" + `model.safetensors` (or a sharded
  `model.safetensors.index.json`), transformers' key names.
- mamba_ssm format (`MambaLMHeadModel.save_pretrained`): `config.json` with `d_model`, `n_layer`, `ssm_cfg`, ...
  + `pytorch_model.bin`, read with `torch.load(weights_only=True)` (never a full unpickle); key names are the
  same except `backbone.embedding.weight`; the vocabulary is padded to `pad_vocab_size_multiple`.
- A hub id (anything that is not an existing path) is fetched with `huggingface_hub.snapshot_download`.
Write: Hugging Face format, each file written to a temporary name and renamed into place; optionally cast
(`dtype`) and cut into shards (`max_shard_size`, transformers' layout: `model-00001-of-0000N.safetensors` +
`model.safetensors.index.json`). `checkpoint_sha256` is the one definition of a checkpoint's hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .auto import model_from_config
from .base import CausalLM
from .config import ConfigError, SSMConfig, config_from_hf_dict, config_from_mamba_ssm_dict

PathLike = Union[str, os.PathLike]

_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"
_WEIGHT_FILES = (_SINGLE, _INDEX, "pytorch_model.bin")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
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
    single = directory / _SINGLE
    index = directory / _INDEX
    pickle = directory / "pytorch_model.bin"
    if single.is_file():
        return _read_safetensors(single), str(single)
    if index.is_file():
        weight_map, shards = _read_index(index)
        tensors: Dict[str, torch.Tensor] = {}
        for shard in shards:
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


def _read_index(index: Path) -> Tuple[Dict[str, str], List[str]]:
    """A sharded checkpoint's index: its weight_map (tensor → shard) and the shards in name order (the order
    transformers numbers them, the order they are read and hashed in)."""
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object")
    return weight_map, sorted(set(weight_map.values()))


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


def parse_size(size: Union[int, str], source: str = "max_shard_size") -> int:
    """Bytes from an int or a string as transformers writes them: "16MiB" (2**20), "16MB" (10**6), "5GB", "800KB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise ValueError(f"{source}: got {size!r}, expected bytes as an integer or a size like '16MiB' or '5GB'")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    if value < 1:
        raise ValueError(f"{source}: got {size!r}, expected a positive size")
    return value


def parse_dtype(name: Union[str, torch.dtype, None], source: str = "dtype") -> Optional[torch.dtype]:
    """A torch dtype from "bf16" / "bfloat16" / "fp16" / "fp32" / a torch.dtype; None or "" keeps the model's."""
    if name is None or name == "" or isinstance(name, torch.dtype):
        return name or None
    if name not in _DTYPES:
        raise ValueError(f"{source}: got {name!r}, expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _header_bytes(name: str, tensor: torch.Tensor) -> int:
    # a safetensors header entry: "name":{"dtype":"BF16","shape":[...],"data_offsets":[a,b]}, with room for
    # 20-digit offsets; an upper bound, so that a shard's file (not only its tensors) stays within the limit
    return len(name) + len(str(list(tensor.shape))) + 96


def plan_shards(tensors: Dict[str, torch.Tensor], max_bytes: int) -> List[List[str]]:
    """Tensor names cut into shards, in sorted-name order, each shard's *file* at most `max_bytes` (tensor data +
    its header). A tensor that cannot fit a file of its own is an error: transformers would write an oversize
    shard, but a limit on files is here a hard one (what a machine can send back, what a hub accepts)."""
    shards: List[List[str]] = []
    used = max_bytes  # forces a first shard
    base = 8 + 64  # the header's length prefix, braces and the __metadata__ entry
    for name in sorted(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size() + _header_bytes(name, t)
        if base + size > max_bytes:
            raise ValueError(f"max_shard_size: tensor {name} {tuple(t.shape)} {t.dtype} takes {size:,} bytes, more "
                             f"than a shard of {max_bytes:,} bytes can hold (tensors are not split across shards)")
        if used + size > max_bytes:
            shards.append([])
            used = base
        shards[-1].append(name)
        used += size
    return shards


def save_pretrained(model: CausalLM, directory: PathLike, *, dtype: Union[str, torch.dtype, None] = None,
                    max_shard_size: Union[int, str, None] = None) -> None:
    """Write `config.json` + the weights (transformers' names; a tied head is stored once).

    dtype: cast the saved tensors ("bf16", torch.bfloat16, ...; None keeps each tensor's dtype) and record it as
    config.json's `torch_dtype`. max_shard_size: with it, transformers' sharded layout (`model-0000k-of-0000N.
    safetensors` + `model.safetensors.index.json`), every file at most that size ("16MiB", bytes); without it one
    `model.safetensors`. Weight files of an earlier save that the new one does not use are removed once the new
    ones are in place (a stale model.safetensors would otherwise win over a new index when loading)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cast = parse_dtype(dtype)
    tensors = {k: v.detach().to(device="cpu", dtype=cast or v.dtype).contiguous() for k, v in model.state_dict().items()}
    hf = model.config.to_hf_dict()
    if cast is not None:
        hf["torch_dtype"] = str(cast).removeprefix("torch.")
    config = json.dumps(hf, indent=2, sort_keys=True)
    # weights first: a config.json on disk never points at weights that are not (yet) there
    if max_shard_size is None or max_shard_size == "":
        _atomic_write(directory / _SINGLE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        written = {_SINGLE}
    else:
        written = _save_shards(tensors, directory, parse_size(max_shard_size))
    for stale in _weight_files(directory):
        if stale not in written:
            (directory / stale).unlink(missing_ok=True)
    _atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(config + "\n"))


def _save_shards(tensors: Dict[str, torch.Tensor], directory: Path, max_bytes: int) -> set:
    plan = plan_shards(tensors, max_bytes)
    names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    for name, keys in zip(names, plan):
        part = {k: tensors[k] for k in keys}
        _atomic_write(directory / name, lambda tmp, part=part: save_file(part, tmp, metadata={"format": "pt"}))
        size = (directory / name).stat().st_size
        assert size <= max_bytes, f"{directory / name}: {size} bytes over the planned {max_bytes}"  # plan_shards' bound
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {k: name for name, keys in zip(names, plan) for k in keys}}
    # the index last: it is what makes the shards a checkpoint; a single model.safetensors left by an earlier
    # save would still win in read_tensors until it is removed just after this
    _atomic_write(directory / _INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n"))
    return {*names, _INDEX}


def _weight_files(directory: Path) -> List[str]:
    """The safetensors weight files of a Hugging Face directory: model.safetensors, the index, its shards."""
    return sorted(p.name for p in directory.iterdir() if p.name in (_SINGLE, _INDEX) or _SHARD.match(p.name))


def checkpoint_files(directory: PathLike) -> List[Path]:
    """The files that hold a checkpoint's weights, in hashing order: `model.safetensors`, or the index followed by
    its shards in name order (the order transformers numbers them)."""
    directory = Path(directory)
    single, index = directory / _SINGLE, directory / _INDEX
    if single.is_file():  # read_tensors' precedence
        return [single]
    if index.is_file():
        return [index, *(directory / shard for shard in _read_index(index)[1])]
    raise FileNotFoundError(f"{directory}: no safetensors weights (looked for {_SINGLE}, {_INDEX})")


def checkpoint_sha256(directory: PathLike) -> str:
    """The checkpoint's identity: sha256 over the bytes of `checkpoint_files` in order. For a single
    model.safetensors that is the file's own sha256 (`sha256sum model.safetensors`), so hashes recorded before
    sharding existed still mean the same thing; config.json is not part of it (it holds no weights)."""
    h = hashlib.sha256()
    for path in checkpoint_files(directory):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {directory / _INDEX} but missing")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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
           "save_pretrained", "checkpoint_files", "checkpoint_sha256", "parse_size", "parse_dtype", "plan_shards"]
