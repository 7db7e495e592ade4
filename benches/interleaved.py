"""Interleaved cross-check of the CEM and store benchmarks: the arms alternate round by round, so
that load from other users of this shared machine hits every arm alike (pytest-benchmark runs one
arm after the other). Writes benches/results/interleaved.json; benches/report.py shows it.

    PYTHONPATH=python python benches/interleaved.py
"""

import json
import mmap
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from bench_cem import DIM, FITNESS, POP, NumpyCEM  # noqa: E402
from bench_store import N, _touch, read_store, write_adapters  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from ssm_offset.adapt import CEM  # noqa: E402
from ssm_offset.store import AdapterStore  # noqa: E402


def interleave(arms, rounds, per_round=1):
    """Seconds per call of each arm, one list entry per round."""
    times = {k: [] for k in arms}
    for _ in range(rounds):
        for k, f in arms.items():
            t = time.perf_counter()
            for _ in range(per_round):
                f()
            times[k].append((time.perf_counter() - t) / per_round)
    return times


def spread(values, scale=1.0):
    """Median, quartiles and extremes."""
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values) * scale, "p25": q[0] * scale, "p75": q[2] * scale,
            "min": min(values) * scale, "max": max(values) * scale}


ROUNDS = int(os.environ.get("STORE_ROUNDS", 41))


def read_bytes(paths):
    """A reference, not an implementation: about the least a load that looks at every byte can cost
    on one core. Maps each store file as `get` does (private) and sums it as 64-bit words with
    numpy: no hash, no parsing, no tensors."""
    total = 0
    for p in paths:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
            words = np.frombuffer(m, dtype=np.uint64, count=len(m) // 8)
            total += int(words.sum())
            del words  # the mapping cannot close while an array points into it
    return total


def main():
    out = {}
    rust, ref = CEM(dim=DIM, population=POP, std_floor=1e-3, seed=0), NumpyCEM(DIM, POP)
    arms = {"rust": lambda: (rust.ask(), rust.tell(FITNESS)), "numpy": lambda: (ref.ask(), ref.tell(FITNESS))}
    out["cem_us"] = {k: statistics.median(v) * 1e6 for k, v in interleave(arms, 4000, 5).items()}
    with tempfile.TemporaryDirectory() as root:
        path, files = write_adapters(root)
        store_files = [os.path.join(path, "adapters", e["file"]) for e in AdapterStore(path).list()]

        def ours(verify, api, touch):
            loaded = read_store(path, verify, api)
            return sum(_touch(t) for t in loaded) if touch else loaded

        def theirs(touch):
            loaded = [load_file(f) for f in files]
            return sum(_touch(t) for t in loaded) if touch else loaded

        arms = {}
        for touch, tag in [(False, "load"), (True, "load+touch")]:
            for verify in ("always", "once"):
                for api in ("get", "get_many"):
                    arms[f"{verify}/{api}/{tag}"] = lambda v=verify, a=api, touch=touch: ours(v, a, touch)
            arms[f"load_file/{tag}"] = lambda touch=touch: theirs(touch)
        arms["bytes only/load"] = lambda: read_bytes(store_files)
        for f in arms.values():  # warm: page cache, the index, and one hash of each file for verify="once"
            f()
        times = interleave(arms, ROUNDS)
        out["store_ms"] = {k: spread(v, 1e3) for k, v in times.items()}
        # Speed-up round by round (load_file and the arm ran back to back, under the same load from
        # the machine's other users), then its median and quartiles.
        out["store_speedup"] = {
            k: spread([r / x for r, x in zip(times[f"load_file/{k.rsplit('/', 1)[1]}"], v)])
            for k, v in times.items() if not k.startswith("load_file/")
        }
        out["store_rounds"] = ROUNDS
        out["store_files"] = {"count": N, "bytes_each": os.path.getsize(files[0]),
                              "page_cache": "warm (every file read before the first timed round)"}
    out["loadavg_1_5_15_at_end"] = os.getloadavg()
    with open(os.path.join(HERE, "results", "interleaved.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
