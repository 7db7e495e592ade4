"""The `ssm-offset` command line. Each subcommand lives in its own module and registers itself here."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import adapt, build_kernels, compare, demo, evaluate, experts, generate, info, methods, pretrain, train

# Subcommand modules expose `register(subparsers)`; each sets `func` on its parser.
_SUBCOMMANDS = [info, demo, train, evaluate, generate, pretrain, compare, methods, experts, adapt, build_kernels]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssm-offset",
        description="State-based fine-tuning and self-adaptation of state-space language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def _split_overrides(argv: List[str]):
    """Separate `--section.key VALUE` / `--section.key=VALUE` (config overrides) from the other arguments."""
    rest: List[str] = []
    overrides: List[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a[2:].split("=", 1)[0]
        if a.startswith("--") and "." in name and not name.startswith("."):
            take = 1 if "=" in a else 2
            overrides += argv[i : i + take]
            i += take
        else:
            rest.append(a)
            i += 1
    return rest, overrides


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv, overrides = _split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if overrides and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides  # `--section.key VALUE` settings of the commands that take a run config
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # User errors print one line naming what is wrong, not a traceback.
        print(f"ssm-offset {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
