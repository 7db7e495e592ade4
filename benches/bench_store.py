"""Opening and reading 100 adapters: AdapterStore (memory-mapped, content hash checked) against a
loop of `safetensors.torch.load_file`. Adapters have the shape of a State-offset (h) adapter of
Mamba-130M: 24 layers x (1536 x 16) bf16 = 1.2 MB each. Target: >= 3x.

Two ways to read them: a loop of `get`, and one `get_many` (index read once, files checked in
parallel by the Rust core's thread pool while Python builds the tensors of the ones already
checked). Two variants, both reported (benches/results/rust_core.md says which one the target refers to):
- `load`: each arm's load alone. `load_file` reads every byte (it copies the file); the store
  reads every byte too when it checks the content hash (verify="always", the default).
  With verify="once", a file already hashed in this process whose identity (device, inode, size,
  mtime, ctime, content hash) is unchanged is not hashed again, so its bytes are not read.
- `load+touch`: each arm plus a Python float reduction over every tensor, which costs more
  than either load and is the same for both.

    PYTHONPATH=python python -m pytest benches/bench_store.py --benchmark-only \
        --benchmark-json=benches/results/store.json
"""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssm_offset.store import AdapterStore

N, LAYERS, D, S = 100, 24, 1536, 16


def write_adapters(root):
    """The benchmark's 100 adapters, into a store at root/store and as plain files root/expert<i>.safetensors;
    returns (store path, file paths). Both copies are in the page cache afterwards (just written)."""
    store = AdapterStore(os.path.join(root, "store"))
    files = []
    g = torch.Generator().manual_seed(0)
    for i in range(N):
        t = {f"base_model.model.backbone.layers.{l}.mixer.state_offset": torch.randn(D, S, generator=g).to(torch.bfloat16) for l in range(LAYERS)}
        store.put(f"expert{i}", t, {"peft_type": "STATE_OFFSET"})
        files.append(os.path.join(root, f"expert{i}.safetensors"))
        save_file(t, files[-1])
    return os.path.join(root, "store"), files


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return write_adapters(str(tmp_path_factory.mktemp("bench_store")))


def _touch(tensors):
    # Every byte is read: one reduction over each tensor.
    return sum(float(t.float().sum()) for t in tensors.values())


ROUNDS = 30


def read_store(path, verify, api):
    """Opens the store and reads the 100 adapters' tensors (as the load_file arm returns them)."""
    store = AdapterStore(path, create=False, verify=verify)
    names = [f"expert{i}" for i in range(N)]
    if api == "get_many":
        return [t for t, _, _ in store.get_many(names)]
    return [store.get(n)[0] for n in names]


@pytest.mark.parametrize("touch", [False, True], ids=["load", "load+touch"])
@pytest.mark.parametrize("api", ["get", "get_many"])
@pytest.mark.parametrize("verify", ["always", "once"])
def test_adapter_store(benchmark, adapters, verify, api, touch):
    path, _ = adapters

    def run():
        loaded = read_store(path, verify, api)
        return sum(_touch(t) for t in loaded) if touch else loaded

    benchmark.group = f"open + read 100 adapters ({'load+touch' if touch else 'load'})"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("touch", [False, True], ids=["load", "load+touch"])
def test_safetensors_load_file(benchmark, adapters, touch):
    _, files = adapters

    def run():
        loaded = [load_file(f) for f in files]
        return sum(_touch(t) for t in loaded) if touch else loaded

    benchmark.group = f"open + read 100 adapters ({'load+touch' if touch else 'load'})"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
