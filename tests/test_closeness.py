"""The float64-closeness check every kernel test relies on (tests/closeness.py): run here on CPU tensors, since
the kernel tests themselves only run on a GPU and a check that let everything pass would go unseen there."""
from __future__ import annotations

import json

import pytest
import torch

from closeness import TOL, ErrorLog, check


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_within_the_bound_passes_and_just_over_it_fails(dtype):
    rtol, atol = TOL[dtype]
    want = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64)
    bound = atol + rtol * want.abs()
    assert check("y", (want + 0.99 * bound).float(), want, dtype) is None
    worse = want + 0.99 * bound
    worse[17] = want[17] + 1.05 * bound[17]
    problem = check("y", worse, want, dtype, seed=7)
    assert problem is not None
    assert problem.startswith("y: 1/101 elements off") and "seed=7" in problem and "1.05x tolerance" in problem


def test_unwritten_output_and_wrong_shape_are_named():
    want = torch.zeros(4, 3)
    poisoned = want.clone()
    poisoned[2, 1] = float("nan")
    assert "dB: non-finite values" in check("dB", poisoned, want, torch.float32, seed=3)
    assert check("dC", torch.zeros(3, 4), want, torch.float32) == "dC: shape (3, 4) != (4, 3)"


def test_normwise_scales_by_the_largest_reference_value():
    """A sum that cancels to near zero next to a large one: off element-wise, within the bound norm-wise."""
    want = torch.tensor([1000.0, 1e-3])
    got = torch.tensor([1000.0, 1e-3 + 1.0])
    assert check("dD", got, want, torch.bfloat16) is not None
    assert check("dD", got, want, torch.bfloat16, normwise=True) is None
    assert check("dD", torch.tensor([1000.0, 1e-3 + 40.0]), want, torch.bfloat16, normwise=True) is not None


def test_a_tolerance_given_replaces_the_dtype_default():
    want = torch.ones(8)
    got = want + 5e-3  # over fp32's 2e-3 + 6e-4, under (1e-3, 1e-2)
    assert check("dA", got, want, torch.float32) is not None
    assert check("dA", got, want, torch.float32, tol=(1e-3, 1e-2)) is None


def test_error_log_keeps_the_worst_case_and_writes_it(tmp_path):
    log = ErrorLog()
    want = torch.zeros(5)
    check("y", want + 1e-3, want, torch.float32, log=log)
    check("y", want + 4e-3, want, torch.float32, log=log)  # a failure is recorded too
    check("y", want + 2e-3, want, torch.float32, log=log)
    path = tmp_path / "errors.json"
    log.write(str(path))
    rows = json.loads(path.read_text())
    assert list(rows) == ["y [float32]"]
    assert rows["y [float32]"]["max_abs_err"] == pytest.approx(4e-3)
    assert rows["y [float32]"]["max_err_over_tol"] == pytest.approx(2.0)
    log.write(None)  # no path: nothing written, no error
