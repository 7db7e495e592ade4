"""Turns the pytest-benchmark JSON files of the Rust core's benchmarks into
`benches/results/rust_core.md` (ratios against the targets of issue 4).

    python benches/report.py
"""

import json
import os

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def load(name):
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return None, {}
    with open(path) as f:
        data = json.load(f)
    return data, {b["name"]: b for b in data.get("benchmarks", [])}


def main():
    lines = ["# Rust core benchmarks (issue 4)", ""]
    machine = None
    tok_data, tok = load("tokenize.json")
    if tok:
        machine = tok_data.get("ssm_offset_machine")
        # The machine is shared, so rounds vary; the fastest round is the best estimate of each
        # implementation's own speed, the mean is shown too.
        rate = {k: v["extra_info"]["tokens"] / v["stats"]["min"] for k, v in tok.items()}
        mrate = {k: v["extra_info"]["tokens"] / v["stats"]["mean"] for k, v in tok.items()}
        ours = rate["test_ssm_offset"]
        lines += [
            "## Tokenization: shared corpus, GPT-NeoX tokenizer, one document per line, no disk cache",
            "",
            "| implementation | tokens | best s | mean s | tokens/s (best) | tokens/s (mean) | ours / it (best) | ours / it (mean) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in tok.items():
            lines.append(
                f"| {k.removeprefix('test_')} | {v['extra_info']['tokens']:,} | {v['stats']['min']:.2f} | "
                f"{v['stats']['mean']:.2f} | {rate[k] / 1e6:.3f}M | {mrate[k] / 1e6:.3f}M | {ours / rate[k]:.2f}x | "
                f"{mrate['test_ssm_offset'] / mrate[k]:.2f}x |"
            )
        lines += [
            "",
            f"Targets: >= 1.3x `datasets.map` (measured {ours / rate['test_datasets_map']:.2f}x on best rounds), "
            f">= 0.9x `encode_batch_fast` (measured {ours / rate['test_tokenizers[encode_batch_fast]']:.2f}x on best rounds); "
            "ids identical (checked in the benchmark and in tests/test_tokenize.py).",
            "",
        ]
    cem_data, cem = load("cem.json")
    if cem:
        machine = machine or cem_data.get("ssm_offset_machine")
        r, n = cem["test_cem_ask_tell[rust]"]["stats"], cem["test_cem_ask_tell[numpy]"]["stats"]
        lines += [
            "## CEM ask+tell per iteration, dim 288, population 32",
            "",
            "| implementation | median us | mean us |",
            "|---|---|---|",
            f"| Rust core (ssm_offset.adapt.CEM) | {r['median'] * 1e6:.1f} | {r['mean'] * 1e6:.1f} |",
            f"| NumPy | {n['median'] * 1e6:.1f} | {n['mean'] * 1e6:.1f} |",
            "",
            f"Target >= 5x faster: measured {n['median'] / r['median']:.2f}x (medians).",
            "",
        ]
    st_data, st = load("store.json")
    if st:
        machine = machine or st_data.get("ssm_offset_machine")
        rows = [
            ('AdapterStore.get, verify="always" (default: content hash on every load)', "test_adapter_store[always-{}]"),
            ('AdapterStore.get, verify="once" (hash once per file and process)', "test_adapter_store[once-{}]"),
            ("safetensors.torch.load_file loop", "test_safetensors_load_file[{}]"),
        ]
        lines += [
            "## Store: open and read 100 adapters (24 x 1536 x 16 bf16 each, 1.2 MB)",
            "",
            "| implementation | load: median ms | load: load_file / it | load+touch: median ms | load+touch: load_file / it |",
            "|---|---|---|---|---|",
        ]
        ref = {v: st[f"test_safetensors_load_file[{v}]"]["stats"]["median"] for v in ("load", "load+touch")}
        for label, key in rows:
            a, b = st[key.format("load")]["stats"]["median"], st[key.format("load+touch")]["stats"]["median"]
            lines.append(f"| {label} | {a * 1e3:.1f} | {ref['load'] / a:.2f}x | {b * 1e3:.1f} | {ref['load+touch'] / b:.2f}x |")
        once = ref["load"] / st["test_adapter_store[once-load]"]["stats"]["median"]
        always = ref["load"] / st["test_adapter_store[always-load]"]["stats"]["median"]
        lines += [
            "",
            "`load` is each arm's load alone; `load+touch` adds a Python float reduction over every tensor (the",
            "same for both arms, and dearer than either load). The target refers to `load`: that is what \"opening",
            "and reading\" measures, and in it both arms read every byte (`load_file` by copying, `get` by",
            'hashing) -- except `get` with verify="once" after the first load of a file in the process, which',
            "reads no tensor byte at all, so that row is an upper bound on what skipping the hash buys.",
            f'Target >= 3x faster: {always:.2f}x with the default verify="always", {once:.2f}x with verify="once"',
            "(medians of `load`).",
            "",
        ]
    il_data, _ = load("interleaved.json")
    if il_data:
        c, m = il_data["cem_us"], il_data["store_ms"]
        lines += [
            "## Interleaved cross-check (`benches/interleaved.py`: arms alternate round by round)",
            "",
            f"CEM: Rust {c['rust']:.1f} us, NumPy {c['numpy']:.1f} us per iteration: {c['numpy'] / c['rust']:.2f}x.",
            "",
            "| store arm | load: median ms | load: load_file / it | load+touch: median ms | load+touch: load_file / it |",
            "|---|---|---|---|---|",
        ]
        for arm in ("always", "once", "load_file"):
            a, b = m[f"{arm}/load"], m[f"{arm}/load+touch"]
            lines.append(f"| {arm} | {a:.1f} | {m['load_file/load'] / a:.2f}x | {b:.1f} | {m['load_file/load+touch'] / b:.2f}x |")
        lines += ["", f"Load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in il_data['loadavg_1_5_15_at_end'])}.", ""]
    lines += [
        "## Before and after (branch rust-perf)",
        "",
        "- CEM ask+tell: 41.1 us vs NumPy 129.7 us (3.15x) before; see the tables above for after.",
        "- Store: before, only `load+touch` was measured, with a touch per adapter: 72.6 ms vs 66.8 ms (0.92x).",
        "  Measured again before the changes in the `load` variant (interleaved, same machine): 35.3 ms vs",
        "  33.0 ms (0.93x).",
        "",
    ]
    lines += [
        "## Where the targets stand, and why (measured, issue 4)",
        "",
        '- **Store (target 3x): missed with the default verify="always" (about 1x); 2.3-2.5x with "once".**',
        "  Per 1.2 MB adapter, `load_file` costs about 0.34 ms (one copy out of the page cache). With",
        '  verify="always", `get` hashes the whole file (XXH3-128, one sequential pass of 0.15-0.2 ms: the',
        "  hash cannot be split over cores without changing the store's hash, and the `xxhash-rust` build is",
        "  SSE2-only, AVX2 needs a compile-time flag) and pays page faults on a fresh private mapping, as much",
        '  as the copy: about 1x. verify="once" (opt-in, documented in `AdapterStore` and `store::Verify`) skips',
        "  the pass for a file already hashed in this process whose identity (device, inode, size, mtime,",
        "  ctime, content hash) is unchanged; what remains per load is the lock, mmap, header parse, checks",
        "  against the index and about 50 Python objects (entry dict, 24 tensors), about 0.14 ms, much of it",
        "  Python's garbage collector walking those objects. 3x needs about 0.11 ms. Next: a lazily built",
        "  entry dict, a batch `get_many`, an AVX2 hash with run-time dispatch.",
        "- **CEM (target 5x).** Sampling 9,216 normals dominates. Before: rand_distr's ziggurat (64 bits per",
        "  draw) in 4 blocks handed to the rayon pool, whose wake-up cost 10-20 us on this loaded machine. Now:",
        "  a batch ziggurat on the same tables taking 32 bits per draw (two draws per xoshiro256++ output;",
        "  float32-like resolution within a layer; exact slow path), on the calling thread below 65k values",
        "  (still 4 fixed blocks, so a seed's run does not depend on threads), the population buffer reused,",
        "  mean/std/clamp fused into one pass, elite statistics computed row by row.",
        "- The machine is shared with other sessions (see the load average): rounds vary by up to 2x; the",
        "  tokenization table uses each implementation's fastest round as its speed and shows the mean too.",
        "",
    ]
    if machine:
        lines += ["## Machine", "", "```", json.dumps(machine, indent=1), "```", ""]
        loads = [
            f"- `{name}`: {', '.join(f'{x:.2f}' for x in d['ssm_offset_machine']['loadavg_1_5_15_at_end'])}"
            for name, d in (("tokenize.json", tok_data), ("cem.json", cem_data), ("store.json", st_data))
            if d and "ssm_offset_machine" in d
        ]
        lines += ["Load average (1, 5, 15 min) at the end of each run:", "", *loads, ""]
    lines += [
        "## Commands",
        "",
        "```",
        "cargo build --release --features python,pyo3/extension-module -p ssm-offset-core",
        "cp target/release/libssm_offset_core.so python/ssm_offset/_core.abi3.so",
        "# the machine is shared: the load average at the end of each run is stored in the JSON files",
        "PYTHONPATH=python python -m pytest benches/bench_tokenize.py --benchmark-only --benchmark-json=benches/results/tokenize.json",
        "PYTHONPATH=python python -m pytest benches/bench_cem.py --benchmark-only --benchmark-json=benches/results/cem.json",
        "PYTHONPATH=python python -m pytest benches/bench_store.py --benchmark-only --benchmark-json=benches/results/store.json",
        "PYTHONPATH=python python benches/interleaved.py",
        "python benches/report.py",
        "```",
    ]
    with open(os.path.join(HERE, "rust_core.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
