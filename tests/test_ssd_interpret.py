"""The SSD chunk-scan Triton kernel checked on CPU under Triton's interpreter, against the float64 chunked
reference: the kernel alone (fed the earlier stages by a torch version of them) and, where mamba_ssm is
importable, the whole CUDA forward and backward. The kernels run in a child process
(tests/helpers/ssd_interpret_child.py): TRITON_INTERPRET must be set before a kernel is defined and must not
reach the kernels of other tests in this process."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "helpers" / "ssd_interpret_child.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs triton (its CPU interpreter runs the kernel)")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssd_interpret") / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(CHILD), str(out)], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())


def _check(results, kind):
    if isinstance(results.get(kind), str):
        pytest.skip(results[kind])
    cases = {k: v for k, v in results.items() if k.startswith(kind + ":")}
    assert cases, f"no {kind} cases ran"
    failures = {k: v for k, v in cases.items() if v}
    assert not failures, json.dumps(failures, indent=1)


def test_kernel_matches_float64_reference(results):
    """fp32 and fp16, with and without D, z (forward and the gate's backward mode), initial state, state offset
    and y offset (shared and per row), documents, groups 1 and 2, chunks 16 and 32, one N over two tiles."""
    _check(results, "kernel")


def test_kernel_bf16_matches_float64_reference(results):
    _check(results, "kernel-bf16")


def test_whole_cuda_path_matches_float64_reference(results):
    """mamba_ssm's Triton stages + ours, forward and backward (kernel.ssd_fwd_cuda / ssd_bwd_cuda), fp32."""
    _check(results, "pipeline")
