"""Where a store load's time goes (issue 4's ≥ 3× target): the Rust core's `get_many` alone, Python turning its
results into torch tensors, and the whole call with the content hash on every load (verify="always") and once
per file identity (verify="once"), against a loop of `safetensors.torch.load_file` — the benchmark's 100 adapters,
page cache warm, arms interleaved, medians of 20 rounds.

    OMP_NUM_THREADS=1 PYTHONPATH=python python benches/store_breakdown.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import N, write_adapters  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from ssm_offset.store import AdapterStore, _unpack  # noqa: E402


def main(rounds: int = 20) -> None:
    torch.set_num_threads(1)
    path, files = write_adapters(tempfile.mkdtemp())
    names = [f"expert{i}" for i in range(N)]
    t = {k: [] for k in ("load_file", "always: core call", "always: tensors (waits for hashes)", "always: total",
                         "once: total")}
    for _ in range(rounds):
        t0 = time.perf_counter()
        x = [load_file(f) for f in files]
        t["load_file"].append(time.perf_counter() - t0)
        del x
        s = AdapterStore(path, create=False, verify="always")
        t0 = time.perf_counter()
        got = s._store.get_many(names, False)
        t1 = time.perf_counter()
        out = [_unpack(n, g, "torch") for n, g in zip(names, got)]
        t2 = time.perf_counter()
        t["always: core call"].append(t1 - t0)
        t["always: tensors (waits for hashes)"].append(t2 - t1)
        t["always: total"].append(t2 - t0)
        del got, out
        s = AdapterStore(path, create=False, verify="once")
        t0 = time.perf_counter()
        out = s.get_many(names)
        t["once: total"].append(time.perf_counter() - t0)
        del out
    base = statistics.median(t["load_file"])
    print("| arm | median ms | load_file / arm |\n|---|---|---|")
    for k, v in t.items():
        m = statistics.median(v)
        print(f"| {k} | {m * 1e3:.2f} | {base / m:.2f}× |")


if __name__ == "__main__":
    main()
