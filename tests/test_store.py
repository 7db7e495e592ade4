"""AdapterStore: the Rust store through its Python API (rust/src/store, python/ssm_offset/store.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ssm_offset import _core
from ssm_offset.store import AdapterStore, CorruptFileError, base_fingerprint


def _state_offset_adapter(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"base_model.model.backbone.layers.{i}.mixer.state_offset": torch.randn(96, 16, generator=g).to(torch.bfloat16)
        for i in range(4)
    } | {"bias": torch.randn(7, generator=g)}


CONFIG = {"peft_type": "STATE_OFFSET", "target": "h", "base_model_name_or_path": "state-spaces/mamba-130m-hf"}


def test_put_get_roundtrip_torch_and_numpy(tmp_path):
    store = AdapterStore(tmp_path / "s")
    tensors = _state_offset_adapter()
    entry = store.put("samsum", tensors, CONFIG, {"epochs": 3}, tags=["summarise"], metrics={"rougeL": 0.41})
    assert entry["method"] == "STATE_OFFSET"
    got, config, meta = store.get("samsum")
    assert config == CONFIG
    assert meta["metadata"] == {"epochs": 3} and meta["tags"] == ["summarise"] and meta["metrics"] == {"rougeL": 0.41}
    # The tensor list stays in the index (`entry`); what get returns carries it in the tensors themselves.
    assert "tensors" not in meta
    assert store.entry("samsum")["tensors"]["bias"] == {"dtype": "F32", "shape": [7]}
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    np_in = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.int64)}
    store.put("np", np_in)
    arrays, _, _ = store.get("np", as_="numpy")
    for k, v in np_in.items():
        assert arrays[k].dtype == v.dtype and np.array_equal(arrays[k], v)


def test_get_is_zero_copy_and_copy_on_write(tmp_path):
    store = AdapterStore(tmp_path)
    store.put("a", {"w": torch.arange(1024, dtype=torch.float32)})
    t1, _, _ = store.get("a")
    w = t1["w"]
    # The tensor's memory lies inside the file mapping that the core hands out, which owns it.
    buf, locs, _ = store._store.get("a")
    assert isinstance(buf.base, _core.MappedFile)
    (_, _, _, _, start, end) = locs[0]
    t_again, _, _ = store.get("a")
    assert end - start == 4096
    assert t_again["w"].untyped_storage().nbytes() == buf.nbytes  # a view of the whole mapping, no copy
    w[0] = -1.0  # private mapping: the store is untouched
    t2, _, _ = store.get("a")
    assert t2["w"][0] == 0.0
    assert store.verify() == []


def test_list_filters_and_delete(tmp_path):
    store = AdapterStore(tmp_path)
    fp = base_fingerprint({"d_model": 768, "n_layer": 24}, {"w": torch.ones(10)})
    assert fp != base_fingerprint({"d_model": 768, "n_layer": 24}, {"w": torch.zeros(10)})
    store.put("a", {"x": torch.ones(2)}, {"peft_type": "LORA"}, tags=["sql"], base_fingerprint=fp)
    store.put("b", {"x": torch.ones(2)}, {"peft_type": "STATE_OFFSET"}, tags=["sql", "qa"])
    store.put("c", {"x": torch.ones(2)}, method="svf", base_config={"d_model": 768, "n_layer": 24}, tags=["qa"])
    assert store.names(tag="sql") == ["a", "b"]
    assert store.names(method="svf") == ["c"]
    assert store.names(base_fingerprint=fp) == ["a"]
    assert store.list(base_fingerprint=base_fingerprint({"d_model": 768, "n_layer": 24}))[0]["name"] == "c"
    assert store.delete("b") and not store.delete("b")
    assert "b" not in store and len(store) == 2
    with pytest.raises(KeyError, match='no adapter named "b"'):
        store.get("b")


def test_bad_inputs_raise_python_errors(tmp_path):
    store = AdapterStore(tmp_path)
    with pytest.raises(ValueError, match="non-finite"):
        store.put("nan", {"w": torch.tensor([1.0, float("nan")])}, check_finite=True)
    with pytest.raises(TypeError, match="JSON"):
        store.put("x", {"w": torch.ones(1)}, metadata={"t": torch.ones(1)})
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        store.put("x", {"w": [1, 2]})
    with pytest.raises(ValueError, match="already exists"):
        store.put("y", {"w": torch.ones(1)})
        store.put("y", {"w": torch.ones(1)}, overwrite=False)


def _only_file(tmp_path):
    (name,) = os.listdir(tmp_path / "adapters")
    return tmp_path / "adapters" / name


def test_truncated_or_corrupt_file_names_the_file(tmp_path):
    store = AdapterStore(tmp_path)
    store.put("a", _state_offset_adapter())
    path = _only_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=str(path)):
        store.get("a")
    corrupt = bytearray(data)
    corrupt[len(data) - 10] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(CorruptFileError, match="content hash"):
        store.get("a")
    assert len(store.verify()) == 1
    path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        store.get("a")


def test_index_that_lies_is_caught(tmp_path):
    store = AdapterStore(tmp_path)
    store.put("a", {"w": torch.ones(4)})
    index_path = tmp_path / "index.json"
    index = json.loads(index_path.read_text())
    index["adapters"]["a"]["tensors"]["w"]["shape"] = [2, 2]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="index describes different tensors"):
        store.get("a")
    index_path.write_text('{"format": "ssm-offset-store", "version": 1, "adapters": {"a": 5}}')
    with pytest.raises(CorruptFileError, match="index.json"):
        store.list()
    report = store.compact(rebuild=True)
    assert report["adapters"] == 1
    assert torch.equal(store.get("a")[0]["w"], torch.ones(4))


def test_raw_safetensors_with_bad_header_is_rejected(tmp_path):
    """A file written by someone else and smuggled under an index entry: huge header length."""
    store = AdapterStore(tmp_path)
    store.put("a", {"w": torch.ones(4)})
    path = _only_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[:8] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=str(path)):
        store.get("a")


WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from ssm_offset.store import AdapterStore
    store = AdapterStore(sys.argv[1])
    start = int(sys.argv[2])
    for i in range(start, start + 1000):
        g = torch.Generator().manual_seed(i)
        w = torch.randn(1 << 20, generator=g)
        print("begin", i, flush=True)
        t0 = time.perf_counter()
        store.put(f"a{i}", {"w": w, "i": torch.tensor([i])})
        print("end", i, time.perf_counter() - t0, flush=True)
    """
)


def test_sigkill_mid_put_leaves_store_readable(tmp_path):
    root = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    committed: list[int] = []
    killed_mid_put = 0
    rng = np.random.default_rng(0)
    # Each round lets a few puts complete (timing them), then kills the writer a random fraction of
    # a put's duration after it announces the next put, so the kill usually lands inside put().
    # Rounds go on until two kills did (bounded), so a fast or slow machine cannot make the test vacuous.
    for round_ in range(12):
        if killed_mid_put >= 2:
            break
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(round_ * 1000)], stdout=subprocess.PIPE, env=env, text=True
        )
        durations: list[float] = []
        while True:
            kind, i, *rest = proc.stdout.readline().split()
            if kind == "end":
                committed.append(int(i))
                durations.append(float(rest[0]))
            elif len(durations) >= 2:
                break
        time.sleep(rng.uniform(0.0, 0.9) * min(durations))
        proc.send_signal(signal.SIGKILL)
        last = "begin"
        for line in proc.stdout.read().splitlines():
            kind, i, *_ = line.split()
            last = kind
            if kind == "end":
                committed.append(int(i))
        killed_mid_put += last == "begin"
        proc.wait()
    assert killed_mid_put >= 2, "under two kills inside put() in 12 rounds"
    store = AdapterStore(root)
    names = set(store.names())
    for i in committed:
        assert f"a{i}" in names
    for name in names:  # every committed adapter, including one whose put finished unreported
        t, _, _ = store.get(name)
        i = int(t["i"])
        g = torch.Generator().manual_seed(i)
        assert torch.equal(t["w"], torch.randn(1 << 20, generator=g))
    problems = store.verify()
    assert all(p["name"] is None for p in problems), problems  # at most debris, nothing broken
    store.compact()
    assert store.verify() == []


def test_a_panic_in_the_core_is_an_ordinary_exception():
    with pytest.raises(RuntimeError, match="internal error in ssm_offset._core.*boom"):
        _core._panic_for_test("boom")


def test_read_only_store_can_be_read(tmp_path):
    store = AdapterStore(tmp_path / "s")
    store.put("a", {"w": torch.ones(3)})
    os.remove(tmp_path / "s" / ".lock")
    os.chmod(tmp_path / "s", 0o555)
    try:
        if os.access(tmp_path / "s", os.W_OK):
            pytest.skip("running as a user who can write anyway (root)")
        assert torch.equal(AdapterStore(tmp_path / "s", create=False).get("a")[0]["w"], torch.ones(3))
    finally:
        os.chmod(tmp_path / "s", 0o755)


def test_verify_once_still_catches_a_file_written_in_place(tmp_path):
    AdapterStore(tmp_path).put("a", {"w": torch.ones(64)})
    store = AdapterStore(tmp_path, verify="once")
    assert torch.equal(store.get("a")[0]["w"], torch.ones(64))
    assert torch.equal(store.get("a")[0]["w"], torch.ones(64))  # hash remembered
    path = _only_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new ctime
    with pytest.raises(CorruptFileError, match="content hash"):
        store.get("a")
    assert len(store.verify()) == 1
    with pytest.raises(ValueError, match="verify must be"):
        AdapterStore(tmp_path, verify="never")


def test_get_many_equals_get_in_order_and_names_the_failing_file(tmp_path):
    store = AdapterStore(tmp_path)
    for i in range(5):
        store.put(f"a{i}", _state_offset_adapter(seed=i), CONFIG | {"i": i}, {"seed": i})
    names = ["a3", "a0", "a3", "a4"]
    many = store.get_many(names)
    assert len(many) == len(names)
    for name, (tensors, config, entry) in zip(names, many):
        one, one_config, one_entry = store.get(name)
        assert config == one_config and entry == one_entry and entry["name"] == name
        assert set(tensors) == set(one)
        for k, v in tensors.items():
            assert v.dtype == one[k].dtype and torch.equal(v, one[k])
    # Zero-copy like get: a view of the file's mapping, and private to this load.
    (t0, _, _), (t2, _, _) = many[0], many[2]
    t0["bias"][0] = 1e6
    assert t2["bias"][0] != 1e6
    store.put("f", {"w": np.arange(6, dtype=np.float32)})
    arrays = store.get_many(["f"], as_="numpy")[0][0]
    assert np.array_equal(arrays["w"], np.arange(6, dtype=np.float32))
    assert store.get_many([]) == []
    with pytest.raises(ValueError, match="as_ must be"):
        store.get_many(["a1"], as_="jax")
    with pytest.raises(KeyError, match='no adapter named "zz"'):
        store.get_many(["a1", "zz"])
    path = tmp_path / "adapters" / store.entry("a4")["file"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=f"{path}.*content hash"):
        store.get_many(["a0", "a4", "a1"])
