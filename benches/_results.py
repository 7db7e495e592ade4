"""How every benchmark script hands back its table: printed, and with `--out PREFIX` written as PREFIX.md (the
table) and PREFIX.json (the figures and the machine/command they came from), the folder created if needed."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional


def emit(lines: list[str], out: Optional[str], **payload) -> None:
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(payload, indent=1))
        Path(out + ".md").write_text(text + "\n")


def cpu_meta(script: str, argv=None, **extra) -> dict:
    """Where and how a CPU benchmark ran: the machine, torch and Python, the date and the command line."""
    import torch

    args = argv if argv is not None else sys.argv[1:]
    return dict(machine=f"{platform.machine()} CPU, {os.cpu_count()} cores", torch=torch.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M:%S"),
                command=f"python benches/{script} " + " ".join(args), **extra)
