"""`ssm-offset pretrain [CONFIG.toml] [--section.key VALUE ...]`: a small model from scratch on plain text.

    [model]  model_type = "mamba2"  hidden_size = 256  num_hidden_layers = 4  ...   (a config.json's fields)
    [data]   tokenizer = "tokenizer.json"  corpus = ["texts/"]  block_size = 256
    [train]  max_steps = 2000  lr = 2e-3  ...                                        (TrainConfig)

Deterministic for a seed on CPU; the model goes to <output_dir>/final with its sha256 (final/model.sha256)."""
from __future__ import annotations

import json
from typing import Any, Dict

ARCHS = {"mamba": "mamba", "mamba2": "mamba2", "transmamba": "transmamba"}
DEFAULT_MODEL = {"model_type": "mamba2", "hidden_size": 256, "state_size": 32, "num_hidden_layers": 6,
                 "num_heads": 8, "head_dim": 64, "n_groups": 1, "expand": 2}


def pretrain_from_dict(raw: Dict[str, Any], source: str, log=print) -> Dict[str, Any]:
    from ssm_offset.train import TrainConfig, TrainConfigError
    from ssm_offset.train.run import pretrain

    unknown = sorted(set(raw) - {"model", "data", "train"})
    if unknown:
        raise TrainConfigError(f"{source}: unknown section(s) {unknown}; known sections: ['data', 'model', 'train']")
    data = dict(raw.get("data", {}))
    bad = sorted(set(data) - {"tokenizer", "corpus", "block_size"})
    if bad:
        raise TrainConfigError(f"{source} [data]: unknown key(s) {bad}; known keys: ['block_size', 'corpus', 'tokenizer']")
    for key in ("tokenizer", "corpus"):
        if key not in data:
            raise TrainConfigError(f"{source} [data]: missing {key}")
    corpus = data["corpus"] if isinstance(data["corpus"], list) else [data["corpus"]]
    train = TrainConfig.from_dict(raw.get("train", {}), f"{source} [train]")
    model = raw.get("model", {})
    # a bare model_type of the Mamba-2 family takes the default sizes; Mamba-1 has its own fields
    sized = "model_type" not in model or (model["model_type"] in ("mamba2", "transmamba") and set(model) == {"model_type"})
    arch = {**DEFAULT_MODEL, **model} if sized else model
    return pretrain(arch, corpus, data["tokenizer"], int(data.get("block_size", 256)), train, log=log)


def run(args) -> int:
    from ssm_offset.train.config import load_toml

    from .train import parse_overrides

    raw: Dict[str, Any] = load_toml(args.config) if args.config else {}
    if args.arch:
        raw.setdefault("model", {}).setdefault("model_type", ARCHS[args.arch])
    for key, value in parse_overrides(args.overrides):
        section, _, name = key.partition(".")
        if section not in ("model", "data", "train") or not name:
            raise ValueError(f"--{key}: expected --model.FIELD, --data.FIELD or --train.FIELD")
        if section == "train":
            from ssm_offset.train.run import override

            override(raw, key, value)
            continue
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if name == "corpus" and isinstance(parsed, str):
            parsed = parsed.split(",")
        raw.setdefault(section, {})[name] = parsed
    result = pretrain_from_dict(raw, args.config or "flags")
    print(json.dumps({k: result[k] for k in ("model", "sha256", "parameters", "step", "loss", "best")}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="a small model from scratch on a text corpus (deterministic, sha256)",
                       description=__doc__)
    p.add_argument("config", nargs="?", default="")
    p.add_argument("--arch", choices=sorted(ARCHS), help="the architecture, with DEFAULT_MODEL's sizes "
                   "(same as --model.model_type; TransMamba adds its TransPoint schedules, see models.config)")
    p.set_defaults(func=run, accepts_overrides=True)
