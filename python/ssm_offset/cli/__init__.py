"""The `ssm-offset` command line. Each subcommand lives in its own module and registers itself here."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import adapt, build_kernels, demo, experts, info, methods

# Subcommand modules expose `register(subparsers)`; each sets `func` on its parser.
_SUBCOMMANDS = [info, demo, methods, build_kernels, experts, adapt]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssm-offset",
        description="State-based fine-tuning and self-adaptation of state-space language models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # User errors print one line naming what is wrong, not a traceback.
        print(f"ssm-offset {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
