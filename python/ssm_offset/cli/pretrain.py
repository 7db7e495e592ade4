"""`ssm-offset pretrain [CONFIG.toml] [--section.key VALUE ...]`: a small model from scratch on plain text.

    [model]  model_type = "mamba2"  hidden_size = 256  num_hidden_layers = 4  ...   (a config.json's fields)
    [data]   tokenizer = "tokenizer.json"  corpus = ["texts/"]  block_size = 256
             # or, pre-tokenized: tokens = "corpus.npy" (1-D ids, eos after each document); vocab_size / eos
             # from [model], else the tokenizer if given, else the .json beside the .npy (vocab_size, eos_id)
             eval_fraction = 0.02                                                    (blocks held out, seeded)
    [train]  max_steps = 2000  lr = 2e-3  ...                                        (TrainConfig)
             eval_every = 100  early_stopping_patience = 5  load_best_model_at_end = true
             save_dtype = "bf16"  max_shard_size = "16MiB"                            (how final/ is written)

Deterministic for a seed on CPU; the model goes to <output_dir>/final with its sha256 (final/model.sha256,
`ssm_offset.models.checkpoint_sha256`); the learning curve to <output_dir>/curve.csv; everything to
<output_dir>/pretrain.json."""
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
    known = ["block_size", "corpus", "eval_fraction", "tokenizer", "tokens"]
    bad = sorted(set(data) - set(known))
    if bad:
        raise TrainConfigError(f"{source} [data]: unknown key(s) {bad}; known keys: {known}")
    if ("corpus" in data) == ("tokens" in data):
        raise TrainConfigError(f"{source} [data]: give either corpus (text files, with tokenizer) or tokens (a .npy)")
    if "corpus" in data and "tokenizer" not in data:
        raise TrainConfigError(f"{source} [data]: missing tokenizer (needed to read corpus)")
    corpus = data.get("corpus", [])
    corpus = corpus if isinstance(corpus, list) else [corpus]
    fraction = data.get("eval_fraction", 0.02)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        raise TrainConfigError(f"{source} [data]: eval_fraction = {fraction!r}, expected a number")
    train = TrainConfig.from_dict(raw.get("train", {}), f"{source} [train]")
    model = raw.get("model", {})
    # a bare model_type of the Mamba-2 family takes the default sizes; Mamba-1 has its own fields
    sized = "model_type" not in model or (model["model_type"] in ("mamba2", "transmamba") and set(model) == {"model_type"})
    arch = {**DEFAULT_MODEL, **model} if sized else model
    return pretrain(arch, corpus, data.get("tokenizer", ""), int(data.get("block_size", 256)), train, log=log,
                    eval_fraction=float(fraction), tokens=data.get("tokens", ""))


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
    keys = ("model", "sha256", "parameters", "step", "loss", "best", "best_step", "stopped_early", "eval_loss",
            "eval_perplexity", "curve", "seconds")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="a small model from scratch on a text corpus (deterministic, sha256)",
                       description=__doc__)
    p.add_argument("config", nargs="?", default="")
    p.add_argument("--arch", choices=sorted(ARCHS), help="the architecture, with DEFAULT_MODEL's sizes "
                   "(same as --model.model_type; TransMamba adds its TransPoint schedules, see models.config)")
    p.set_defaults(func=run, accepts_overrides=True)
