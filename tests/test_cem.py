"""CEM search (rust/src/cem.rs) through ssm_offset.adapt.CEM."""

import json

import numpy as np
import pytest

from ssm_offset.adapt import CEM


def _sphere(target):
    return lambda pop: -((pop - target) ** 2).sum(axis=1)


def test_finds_the_optimum_with_ask_tell():
    target = np.array([0.1, 0.8, 0.5, 0.3, 0.95, 0.0])
    cem = CEM(dim=6, std_floor=0.02, seed=1)
    for _ in range(60):
        pop = cem.ask()
        assert pop.shape == (32, 6) and pop.dtype == np.float64
        assert pop.min() >= 0.0 and pop.max() <= 1.0  # the paper's clamped box
        cem.tell(_sphere(target)(pop))
    x, fitness = cem.best
    np.testing.assert_allclose(x, target, atol=1e-2)
    assert cem.iteration == 60 and fitness > -1e-3
    np.testing.assert_allclose(cem.mean, target, atol=2e-2)


def test_optimize_hands_the_whole_population_at_once_and_minimises():
    calls = []

    def f(pop):
        calls.append(pop.shape)
        return np.abs(pop - 2.0).sum(axis=1).astype(np.float32)  # any float dtype

    cem = CEM(dim=3, population=16, bounds=None, mean=0.0, std=1.0, std_floor=0.05, maximize=False, seed=0)
    x, fitness = cem.optimize(f, iterations=50)
    assert calls == [(16, 3)] * 50
    np.testing.assert_allclose(x, [2.0, 2.0, 2.0], atol=5e-2)
    assert fitness < 0.1


def test_simplex_rows_are_mixtures():
    cem = CEM(dim=4, param="simplex", std=1.0, seed=0)
    pop = cem.ask()
    np.testing.assert_allclose(pop.sum(axis=1), 1.0)
    assert (pop >= 0).all()
    x, _ = cem.optimize(lambda p: p[:, 2], iterations=30)
    assert x[2] > 0.9


def test_deterministic_and_resumable_through_json():
    f = _sphere(np.linspace(0, 1, 8))
    a = CEM(dim=8, seed=42)
    a.optimize(f, 10)
    b = CEM(dim=8, seed=42)
    b.optimize(f, 4)
    b.ask()  # a pending population is part of the state
    state = json.loads(json.dumps(b.state_dict()))
    c = CEM.from_state(state)
    c.optimize(f, 6)
    assert a.state_dict() == c.state_dict()
    np.testing.assert_array_equal(a.best[0], c.best[0])
    d = CEM(dim=8, seed=43)
    d.optimize(f, 10)
    assert not np.array_equal(a.best[0], d.best[0])


def test_best_is_carried_into_the_next_population():
    cem = CEM(dim=2, seed=0)
    pop = cem.ask()
    fit = pop.sum(axis=1)
    cem.tell(fit)
    assert np.array_equal(cem.ask()[0], pop[np.argmax(fit)])


def test_errors_are_python_exceptions():
    with pytest.raises(ValueError, match="population must be at least 2"):
        CEM(dim=2, population=1)
    with pytest.raises(ValueError, match="mean needs 3 values"):
        CEM(dim=3, mean=[0.1, 0.2])
    cem = CEM(dim=2)
    with pytest.raises(ValueError, match="without a population"):
        cem.tell(np.zeros(32))
    cem.ask()
    with pytest.raises(ValueError, match="needs 32 fitness values"):
        cem.tell(np.zeros(3))
    with pytest.raises(ZeroDivisionError):
        cem.optimize(lambda p: 1 / 0, 1)
    with pytest.raises(ValueError, match="fitness function must return"):
        cem.optimize(lambda p: "nope", 1)
    with pytest.raises(ValueError, match="invalid CEM state"):
        CEM.from_state({"format": "ssm-offset-cem-v1"})
