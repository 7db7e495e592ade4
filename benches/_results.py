"""How every benchmark script hands back its table: printed, and with `--out PREFIX` written as PREFIX.md (the
table) and PREFIX.json (the figures and the machine/command they came from), the folder created if needed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def emit(lines: list[str], out: Optional[str], **payload) -> None:
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(payload, indent=1))
        Path(out + ".md").write_text(text + "\n")
