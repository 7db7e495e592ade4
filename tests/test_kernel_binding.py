"""The Mamba-1 CUDA binding's functions (cuda/selective_scan/binding.cpp) against the calls ops/kernels.py makes:
pybind11 binds arguments by position, so an argument inserted on one side only would shift every later one, and
without a GPU nothing else here would notice. Read from the sources: same number of arguments, each C++ `bool` fed
a Python bool, each tensor parameter fed the Python variable of that name (or its known alias)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDING = ROOT / "cuda" / "selective_scan" / "binding.cpp"
CALLER = ROOT / "python" / "ssm_offset" / "ops" / "kernels.py"

# C++ parameter name -> the Python variable the caller passes for it
ALIAS = {"h0": "initial_state", "hoff": "state_offset", "yoff": "y_offset", "dout": "dy", "dfinal": "dfinal_state",
         "softplus": "delta_softplus", "time_major": "tm"}
OUTPUTS = {"y", "du", "ddelta", "dz"}  # buffers the caller allocates, not inputs


def cpp_params(name: str) -> list[tuple[str, str]]:
    """(kind, name) of each parameter of the function `name` defined in binding.cpp; kind: tensor, optional, bool."""
    src = BINDING.read_text()
    m = re.search(rf"\b{name}\(([^()]*)\)\s*\{{", src)
    assert m, f"{BINDING}: no definition of {name}(...)"
    params = []
    for p in " ".join(m.group(1).split()).split(","):
        p = p.strip()
        kind = "bool" if p.startswith("bool ") else "optional" if "Opt" in p else "tensor" if "Tensor" in p else p
        params.append((kind, re.split(r"[\s&*]+", p)[-1]))
    return params


def python_calls() -> dict[str, list[ast.expr]]:
    """The arguments of each ext.<name>(...) call, with `*helper(...)` replaced by the tuple the module-level
    function `helper` returns (the scan's shared inputs, _scan_inputs)."""
    tree = ast.parse(CALLER.read_text())
    returned = {f.name: r.value.elts for f in tree.body if isinstance(f, ast.FunctionDef)
                for r in ast.walk(f) if isinstance(r, ast.Return) and isinstance(r.value, ast.Tuple)}
    calls = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ext"):
            assert not node.keywords, f"{CALLER}:{node.lineno}: ext.{node.func.attr} takes positional arguments only"
            args = []
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    helper = arg.value.func.id if isinstance(arg.value, ast.Call) else None
                    assert helper in returned, f"{CALLER}:{node.lineno}: cannot read `{ast.unparse(arg)}`"
                    args += returned[helper]
                else:
                    args.append(arg)
            calls[node.func.attr] = args
    return calls


def is_bool(arg: ast.expr) -> bool:
    return (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "bool") or (
        isinstance(arg, ast.Name) and arg.id == "tm")


@pytest.mark.parametrize("name", ["fwd", "bwd", "step"])
def test_python_calls_match_the_binding_argument_for_argument(name):
    params, args = cpp_params(name), python_calls().get(name)
    assert args is not None, f"{CALLER}: no call ext.{name}(...)"
    assert len(args) == len(params), f"ext.{name}: {len(args)} arguments passed, binding.cpp takes {len(params)}"
    for i, ((kind, pname), arg) in enumerate(zip(params, args)):
        where = f"ext.{name} argument {i} ({pname}, {kind}) gets `{ast.unparse(arg)}`"
        assert is_bool(arg) == (kind == "bool"), where
        if kind != "bool" and pname not in OUTPUTS:
            names = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
            want = ALIAS.get(pname, pname)
            assert want in names or want + "_" in names, where


def test_the_check_reads_what_it_should():
    """The parser itself: the forward's parameters as written in binding.cpp today."""
    kinds = [k for k, _ in cpp_params("fwd")]
    assert kinds.count("bool") == 2 and kinds[0] == "tensor" and kinds[-1] == "tensor"
    assert [n for _, n in cpp_params("fwd")][:3] == ["u", "delta", "A"]


@pytest.mark.parametrize("time_parallel, state_parallel, family", [
    (None, None, "rule"), ("", "", "rule"), ("1", None, "time-parallel"), ("2", "1", "time-parallel"),
    ("0", None, "channel-parallel"), ("no", None, "channel-parallel"), (None, "1", "state-parallel forward"),
    (None, "0", "time-parallel for"),
])
def test_info_states_the_kernel_family_rule_the_extension_applies(monkeypatch, time_parallel, state_parallel, family):
    """`ssm-offset info` describes which Mamba-1 kernels run as step.cu's time_parallel() and state_parallel() decide
    it: the variables read as C's atoi (unset or empty: the rules; SSM_OFFSET_TIME_PARALLEL set turns the
    state-parallel rule off), and the rules' bounds as selective_scan.h defines them."""
    from ssm_offset.ops import kernels

    for name, value in (("SSM_OFFSET_TIME_PARALLEL", time_parallel), ("SSM_OFFSET_STATE_PARALLEL", state_parallel)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    text = kernels._kernel_family()
    header = (ROOT / "cuda" / "selective_scan" / "selective_scan.h").read_text()
    lo, hi = (int(v) for v in re.search(r"kTimeParallelFrom = (\d+), kTimeParallelTo = (\d+);", header).groups())
    step = (ROOT / "cuda/selective_scan/step.cu").read_text()
    if family == "rule":
        assert f"{lo + 1:,}..{hi:,} batch x channels" in text and f"backward: from {lo + 1:,} up" in text, text
        assert "N <= 16" in text and "p.nstate <= 16" in step
        assert "(backward || channels <= kTimeParallelTo)" in step
        bwd_from = int(re.search(r"kStateParallelBwdFrom = (\d+);", header).group(1))
        assert text.startswith(f"state-parallel for channel-major fp16/bf16 inputs with N = 16, rows 16-byte aligned "
                               f"and more than {lo:,} batch x channels (the backward: from {bwd_from:,})"), text
        assert ("const bool usable = backward ? detail::sp::usable_bwd<__nv_bfloat16>(p) : "
                "detail::sp::usable<__nv_bfloat16>(p);\n  if (elem_bytes != 2 || !usable) return false;") in step
        usable = (ROOT / "cuda/selective_scan/selective_scan_sp.cuh").read_text()
        assert "return p.nstate == kLanes && tp::direct<T, kGroup>(p)" in usable and "kLanes = 16" in usable
        assert "return !p.time_major && rows_aligned<T>(p.B" in (ROOT / "cuda/selective_scan/selective_scan_tp.cuh").read_text()
        assert "return backward ? channels >= kStateParallelBwdFrom : channels > kTimeParallelFrom;" in step
    else:
        assert text.startswith(family), text


def test_the_state_interval_is_one_number_on_both_sides():
    """The forward op's chunk states: op.py's fake and reference size them with STATES_EVERY, the binding and the
    kernels with selective_scan.h's kStatesEvery; were they to differ, the binding would refuse every backward."""
    from ssm_offset.ops.selective_scan.op import STATES_EVERY

    header = (ROOT / "cuda" / "selective_scan" / "selective_scan.h").read_text()
    found = re.search(r"constexpr int kStatesEvery = (\d+);", header)
    assert found, "selective_scan.h: no kStatesEvery"
    assert int(found.group(1)) == STATES_EVERY
