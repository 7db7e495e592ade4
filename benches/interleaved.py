"""Interleaved cross-check of the CEM and store benchmarks: the arms alternate round by round, so
that load from other users of this shared machine hits every arm alike (pytest-benchmark runs one
arm after the other). Writes benches/results/interleaved.json; benches/report.py shows it.

    PYTHONPATH=python python benches/interleaved.py
"""

import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from bench_cem import DIM, FITNESS, POP, NumpyCEM  # noqa: E402
from bench_store import LAYERS, D, N, S, _touch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ssm_offset.adapt import CEM  # noqa: E402
from ssm_offset.store import AdapterStore  # noqa: E402


def interleave(arms, rounds, per_round=1):
    times = {k: [] for k in arms}
    for _ in range(rounds):
        for k, f in arms.items():
            t = time.perf_counter()
            for _ in range(per_round):
                f()
            times[k].append((time.perf_counter() - t) / per_round)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    out = {}
    rust, ref = CEM(dim=DIM, population=POP, std_floor=1e-3, seed=0), NumpyCEM(DIM, POP)
    arms = {"rust": lambda: (rust.ask(), rust.tell(FITNESS)), "numpy": lambda: (ref.ask(), ref.tell(FITNESS))}
    out["cem_us"] = {k: v * 1e6 for k, v in interleave(arms, 4000, 5).items()}
    with tempfile.TemporaryDirectory() as root:
        store, files = AdapterStore(os.path.join(root, "store")), []
        g = torch.Generator().manual_seed(0)
        for i in range(N):
            t = {f"layers.{l}.mixer.state_offset": torch.randn(D, S, generator=g).to(torch.bfloat16) for l in range(LAYERS)}
            store.put(f"expert{i}", t, {"peft_type": "STATE_OFFSET"})
            files.append(os.path.join(root, f"expert{i}.safetensors"))
            save_file(t, files[-1])
        path = os.path.join(root, "store")

        def ours(verify, touch):
            s = AdapterStore(path, create=False, verify=verify)
            loaded = [s.get(f"expert{i}")[0] for i in range(N)]
            return sum(_touch(t) for t in loaded) if touch else loaded

        def theirs(touch):
            loaded = [load_file(f) for f in files]
            return sum(_touch(t) for t in loaded) if touch else loaded

        arms = {}
        for touch, tag in [(False, "load"), (True, "load+touch")]:
            arms[f"always/{tag}"] = lambda touch=touch: ours("always", touch)
            arms[f"once/{tag}"] = lambda touch=touch: ours("once", touch)
            arms[f"load_file/{tag}"] = lambda touch=touch: theirs(touch)
        out["store_ms"] = {k: v * 1e3 for k, v in interleave(arms, 30).items()}
    out["loadavg_1_5_15_at_end"] = os.getloadavg()
    with open(os.path.join(HERE, "results", "interleaved.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
