"""The benchmark scripts' own bookkeeping on CPU, so that a GPU call (a few minutes of a small budget) does not
end on a script error: benches/bench_ssd.py's rounds, medians, ratios and files with CPU stand-ins for its arms,
benches/bench_reference_scan.py end to end at tiny shapes, and benches/bench_ssd_host.py and bench_scan_host.py in
a child process. The
numbers are not checked, the plumbing is."""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import pytest
import torch

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def load_bench(name):
    """benches/<name>.py as a module (also used by tests/test_adapt_tasks.py)."""
    sys.path.insert(0, str(BENCHES))  # the scripts import their siblings (benches/_results.py, bench_ssd.py)
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCHES))


def test_bench_ssd_rounds_medians_and_files(tmp_path, monkeypatch):
    mod = load_bench("bench_ssd")
    for name, value in (("synchronize", lambda: None), ("memory_allocated", lambda: 0),
                        ("max_memory_allocated", lambda: 3 << 20), ("reset_peak_memory_stats", lambda: None),
                        ("get_device_name", lambda: "cpu stand-in")):
        monkeypatch.setattr(torch.cuda, name, value)
    timings = iter(range(1, 1000))
    monkeypatch.setattr(mod, "bench", lambda fn, warmup=0, rep=0: (fn(), float(next(timings)))[1])

    def make_inputs(grad):
        t = dict(x=torch.randn(2, 3), h=torch.randn(3))
        for v in t.values():
            v.requires_grad_(grad)
        return t

    monkeypatch.setattr(mod, "make_inputs", make_inputs)
    monkeypatch.setattr(mod, "fwd_bwd", lambda fn: (lambda t: lambda: fn(t).sum().backward())(make_inputs(True)))
    monkeypatch.setattr(mod, "graphed", lambda fb: fb)  # no CUDA graph on the CPU: the replay is the call itself
    calls = {"mamba_ssm plain": 0, "ours state offset": 0}

    def arm(name, f):
        def call(t):
            calls[name] += 1
            return f(t)
        return call

    monkeypatch.setattr(mod, "arms", lambda: {"mamba_ssm plain": arm("mamba_ssm plain", lambda t: t["x"] * 2),
                                              "ours state offset": arm("ours state offset", lambda t: t["x"] + t["h"])})
    clock = iter(float(i) for i in range(10_000))  # one "second" per reading of the clock
    monkeypatch.setattr(mod, "time", types.SimpleNamespace(perf_counter=lambda: next(clock), strftime=time.strftime))
    out = tmp_path / "res" / "ssd"
    mod.main(["--rounds", "3", "--out", str(out)])
    rows = {r["arm"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {"mamba_ssm plain", "ours state offset"}
    for r in rows.values():
        assert len(r["samples"]["fwd"]) == len(r["samples"]["fwdbwd"]) == len(r["samples"]["wall"]) == 3
        assert r["fwdbwd_ms"] == sorted(r["samples"]["fwdbwd"])[1]  # the median of three
        assert r["peak_extra_mb"] == 3.0
    # round-robin: a round times every arm (forward, forward+backward, its graph replay) before the next round starts
    assert rows["mamba_ssm plain"]["samples"]["fwd"] == [1.0, 7.0, 13.0]
    assert rows["ours state offset"]["samples"]["fwdbwd"] == [5.0, 11.0, 17.0]
    assert rows["ours state offset"]["samples"]["graph"] == [6.0, 12.0, 18.0]
    assert rows["ours state offset"]["graph_vs_mamba_plain"] == 12.0 / 9.0
    # back to back: 50 calls between two readings of the clock (1 s), the GPU's end one reading later: ms a call
    assert rows["ours state offset"]["samples"]["host"] == [20.0] * 3
    assert rows["ours state offset"]["samples"]["wall"] == [40.0] * 3
    assert rows["ours state offset"]["fwdbwd_vs_mamba_plain"] == pytest.approx(
        rows["ours state offset"]["fwdbwd_ms"] / rows["mamba_ssm plain"]["fwdbwd_ms"])
    assert all(calls[a] > 50 for a in calls)  # the back-to-back loop ran every arm
    md = out.with_suffix(".md").read_text()
    assert "| ours state offset |" in md and "Medians over 3 round-robin rounds" in md


def test_bench_reference_scan_writes_its_table(tmp_path, monkeypatch):
    mod = load_bench("bench_reference_scan")
    monkeypatch.setattr(mod, "MAMBA1", [(1, 4, 9, 2)])
    monkeypatch.setattr(mod, "MAMBA2", [(1, 9, 2, 4, 2)])
    out = tmp_path / "ref"
    mod.main(["--repeat", "1", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["shape"] for r in rows] == ["B1 D4 L9 N2", "B1 L9 H2 P4 N2"]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
    assert out.with_suffix(".md").read_text().count("\n| ") == 3  # header + two rows


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None or importlib.util.find_spec("triton") is None,
                    reason="needs mamba_ssm's pure-Python parts and triton (scripts/setup.sh installs them)")
def _run_host_bench(script, out, *extra):
    """A host-time script in a child process (each stubs kernels or CUDA calls for its whole process); its JSON."""
    import os
    import subprocess

    path = [str(BENCHES.parent / "python"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    proc = subprocess.run([sys.executable, str(BENCHES / script), "--calls", "3", "--rounds", "1", "--out", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())


def test_bench_ssd_host_runs_every_arm(tmp_path):
    rows = _run_host_bench("bench_ssd_host.py", tmp_path / "host")["rows"]
    assert [r["arm"] for r in rows][:3] == ["mamba_ssm plain", "mamba_ssm initial state", "ours plain"]
    mamba = {r["launches"] for r in rows if r["arm"].startswith("mamba_ssm")}
    ours = {r["launches"] for r in rows if r["arm"].startswith("ours")}
    assert len(mamba) == 1 and len(ours) == 1 and min(mamba) > 0, rows  # the same kernels in every arm of each
    # ours reuses the forward's four stages before the chunk scan in its backward, where mamba_ssm's runs them again
    assert min(ours) == min(mamba) - 4, rows


def test_bench_scan_host_times_the_cuda_implementations(tmp_path):
    """The Mamba-1 host-time script goes through ops/kernels.py's CUDA implementations (the stubbed extension saw
    every forward and backward), not the reference, for each arm."""
    result = _run_host_bench("bench_scan_host.py", tmp_path / "host", "--profile")
    assert [r["arm"] for r in result["rows"]] == ["plain", "state offset", "initial state"]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > r["fwd_ms"] for r in result["rows"])
    # warm-up 20 and 1 round of 3 per arm, forward and forward+backward, plus 200 profiled forward+backward calls
    assert result["stub_calls"] == {"fwd": 3 * (20 + 3) * 2 + 200, "bwd": 3 * (20 + 3) + 200}
    assert "ncalls" in result["profile"] and "tottime" in result["profile"]

