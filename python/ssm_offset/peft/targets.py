"""Finding and replacing the modules a method adapts, with errors that list what exists."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..models import Mamba2Mixer, MambaMixer
from .config import AdapterError


def mixers(model: nn.Module, layers: Optional[Sequence[int]] = None) -> List[Tuple[str, nn.Module]]:
    """(path, mixer) of every SSM mixer, optionally only those of the given layer indices."""
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, (MambaMixer, Mamba2Mixer))]
    if not found:
        raise AdapterError(f"{type(model).__name__} has no Mamba / Mamba-2 mixer to adapt")
    if layers is not None:
        valid = {m.layer_idx for _, m in found}
        bad = sorted(set(layers) - valid)
        if bad:
            raise AdapterError(f"layers_to_transform: {bad} are not layers of this model (0..{max(valid)})")
        found = [(p, m) for p, m in found if m.layer_idx in set(layers)]
    return found


def is_mamba2(mixer: nn.Module) -> bool:
    return isinstance(mixer, Mamba2Mixer)


def find_targets(
    model: nn.Module, targets: Iterable[str], kind: type = nn.Linear,
    layers: Optional[Sequence[int]] = None, field: str = "target_modules",
) -> List[Tuple[str, nn.Module]]:
    """Modules of `kind` whose name ends with one of `targets` (peft's suffix rule), inside the given layers.

    A target that matches nothing is an error listing the candidate names, so a typo never trains nothing.
    """
    targets = list(targets)
    allowed = None if layers is None else {p for p, _ in mixers(model, layers)}
    candidates, found, used = set(), [], set()
    for path, module in model.named_modules():
        # an adapter wrapper stands where the module was: a second adapter finds the same name
        if not isinstance(getattr(module, "base_layer", module), kind) or path.split(".")[-1] == "base_layer" \
                or ".base_layer." in path:
            continue
        candidates.add(path.rsplit(".", 1)[-1])
        if allowed is not None and not any(path.startswith(a + ".") for a in allowed):
            continue
        for t in targets:
            if path == t or path.endswith("." + t):
                found.append((path, module))
                used.add(t)
                break
    missing = [t for t in targets if t not in used]
    if missing:
        raise AdapterError(
            f"{field}: {missing} match no {kind.__name__} module of {type(model).__name__}; "
            f"candidates: {sorted(candidates)}"
        )
    return found


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def wrap_once(root: nn.Module, path: str, module: nn.Module, wrapper_cls: type, make: Callable[[nn.Module], nn.Module]):
    """The wrapper at `path`, creating it around `module` if this is the first adapter there."""
    if isinstance(module, wrapper_cls):
        return module
    wrapped = make(module)
    replace_module(root, path, wrapped)
    return wrapped
