"""CEM ask+tell overhead per iteration, dim 288, population 32: the Rust core against the same
algorithm in NumPy (clamped box, 20% elites, best carried over). Target: >= 5x faster.

    PYTHONPATH=python python -m pytest benches/bench_cem.py --benchmark-only --benchmark-json=benches/results/cem.json
"""

import numpy as np
import pytest

from ssm_offset.adapt import CEM

DIM, POP = 288, 32


class NumpyCEM:
    """Reference: the paper's CEM written the usual way in NumPy."""

    def __init__(self, dim, population=32, elite_fraction=0.2, mean=None, std=0.5, bounds=(0.0, 1.0), seed=0):
        self.rng = np.random.default_rng(seed)
        self.n, self.k = population, max(1, round(elite_fraction * population))
        self.mean = np.full(dim, 1.0 / dim if mean is None else mean)
        self.std = np.full(dim, std)
        self.lo, self.hi = bounds
        self.best_x, self.best_f = None, -np.inf

    def ask(self):
        pop = self.mean + self.std * self.rng.standard_normal((self.n, self.mean.size))
        np.clip(pop, self.lo, self.hi, out=pop)
        if self.best_x is not None:
            pop[0] = self.best_x
        self.pop = pop
        return pop

    def tell(self, fitness):
        order = np.argsort(-fitness, kind="stable")
        elites = self.pop[order[: self.k]]
        self.mean = elites.mean(axis=0)
        self.std = elites.std(axis=0)
        if fitness[order[0]] > self.best_f:
            self.best_f, self.best_x = fitness[order[0]], self.pop[order[0]].copy()


FITNESS = np.random.default_rng(0).standard_normal(POP)


def _step(cem):
    cem.ask()
    cem.tell(FITNESS)


@pytest.mark.parametrize("impl", ["rust", "numpy"])
def test_cem_ask_tell(benchmark, impl):
    cem = CEM(dim=DIM, population=POP, std_floor=1e-3, seed=0) if impl == "rust" else NumpyCEM(DIM, POP)
    benchmark.group = f"CEM ask+tell, dim {DIM}, population {POP}"
    benchmark.pedantic(_step, args=(cem,), rounds=2000, iterations=5, warmup_rounds=50)
