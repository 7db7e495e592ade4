"""Opening and reading 100 adapters, touching every byte: AdapterStore (memory-mapped, content
hash checked) against a loop of `safetensors.torch.load_file`. Adapters have the shape of a
State-offset (h) adapter of Mamba-130M: 24 layers x (1536 x 16) bf16 = 1.2 MB each. Target: >= 3x.

    PYTHONPATH=python python -m pytest benches/bench_store.py --benchmark-only \
        --benchmark-json=benches/results/store.json
"""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssm_offset.store import AdapterStore

N, LAYERS, D, S = 100, 24, 1536, 16


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_store")
    store = AdapterStore(root / "store")
    files = []
    g = torch.Generator().manual_seed(0)
    for i in range(N):
        t = {f"base_model.model.backbone.layers.{l}.mixer.state_offset": torch.randn(D, S, generator=g).to(torch.bfloat16) for l in range(LAYERS)}
        store.put(f"expert{i}", t, {"peft_type": "STATE_OFFSET"})
        f = root / f"expert{i}.safetensors"
        save_file(t, str(f))
        files.append(str(f))
    return root / "store", files


def _touch(tensors):
    # Every byte is read: one reduction over each tensor.
    return sum(float(t.float().sum()) for t in tensors.values())


def test_adapter_store(benchmark, adapters):
    path, _ = adapters

    def run():
        store = AdapterStore(path, create=False)
        return sum(_touch(store.get(f"expert{i}")[0]) for i in range(N))

    benchmark.group = "open + read 100 adapters"
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)


def test_safetensors_load_file(benchmark, adapters):
    _, files = adapters

    def run():
        return sum(_touch(load_file(f)) for f in files)

    benchmark.group = "open + read 100 adapters"
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
