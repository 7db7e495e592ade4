"""`ssm-offset train CONFIG.toml [--section.key VALUE ...]`: one fine-tuning run (see ssm_offset.train.run for
the config). Every field of the file can be set or overridden by a flag, e.g. `--train.lr 3e-4
--method.name lora-s6 --data.max_length 256`; a key that does not exist is an error naming it. `--compile` runs
the training steps under torch.compile (the same as `--train.compile true`)."""
from __future__ import annotations

import json
from typing import Any, Dict, List


def parse_overrides(items: List[str]) -> List[tuple]:
    """['--train.lr', '1e-3', '--data.pack=true'] → [('train.lr', '1e-3'), ('data.pack', 'true')]."""
    out, i = [], 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise ValueError(f"unexpected argument {item!r}; overrides are --section.key VALUE")
        if "=" in item:
            key, value = item[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ValueError(f"{item}: missing value")
            key, value = item[2:], items[i + 1]
            i += 2
        out.append((key, value))
    return out


def load_run(path: str, overrides: List[str]):
    from ssm_offset.train.config import load_toml
    from ssm_offset.train.run import RunConfig, override

    raw: Dict[str, Any] = load_toml(path) if path else {}
    for key, value in parse_overrides(overrides):
        override(raw, key, value)
    return RunConfig.from_dict(raw, path or "flags")


def run(args) -> int:
    from ssm_offset.train.run import fine_tune

    overrides = list(args.overrides) + (["--train.compile", "true"] if args.compile else [])
    config = load_run(args.config, overrides)
    summary = fine_tune(config)
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model with one method (TOML config, flags override it)",
                       description=__doc__)
    p.add_argument("config", nargs="?", default="", help="a TOML file with [model] [method] [data] [train] [eval]")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training steps (= --train.compile true; see --train.compile_backend, "
                        "--train.compile_mode)")
    p.set_defaults(func=run, accepts_overrides=True)
