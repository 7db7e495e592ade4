"""Cross-entropy method for searching expert mixing weights (Transformer², few-shot adaptation).

The search itself is the Rust core's (`rust/src/cem.rs`); this module only re-exports it.

    cem = CEM(dim=k, population=32, elite_fraction=0.2, std=0.5, bounds=(0.0, 1.0), seed=0)
    for _ in range(100):
        alphas = cem.ask()                 # (32, k): one candidate mixture per row
        cem.tell(score_batch(alphas))      # one fitness per row (higher is better by default)
    alphas, fitness = cem.best

or, equivalently, `cem.optimize(score_batch, iterations=100)`. `param="simplex"` searches softmax
weights instead of the paper's clamped box. `state_dict()` / `CEM.from_state()` save and resume a
search exactly; a seed fixes the whole run.
"""

from .._core import CEM

__all__ = ["CEM"]
