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
            ('loop of `get`, verify="always" (default: content hash on every load)', "test_adapter_store[always-get-{}]"),
            ('`get_many`, verify="always" (default)', "test_adapter_store[always-get_many-{}]"),
            ('loop of `get`, verify="once" (hash once per file and process)', "test_adapter_store[once-get-{}]"),
            ('`get_many`, verify="once"', "test_adapter_store[once-get_many-{}]"),
            ("safetensors.torch.load_file loop", "test_safetensors_load_file[{}]"),
        ]
        lines += [
            "## Store: open and read 100 adapters (24 x 1536 x 16 bf16 each, 1.2 MB; page cache warm)",
            "",
            "pytest-benchmark, one arm after the other, 30 rounds each.",
            "",
            "| AdapterStore | load: median ms | load: load_file / it | load+touch: median ms | load+touch: load_file / it |",
            "|---|---|---|---|---|",
        ]
        ref = {v: st[f"test_safetensors_load_file[{v}]"]["stats"]["median"] for v in ("load", "load+touch")}
        for label, key in rows:
            a, b = st[key.format("load")]["stats"]["median"], st[key.format("load+touch")]["stats"]["median"]
            lines.append(f"| {label} | {a * 1e3:.1f} | {ref['load'] / a:.2f}x | {b * 1e3:.1f} | {ref['load+touch'] / b:.2f}x |")
        lines += [
            "",
            "`load` is each arm's load alone; `load+touch` adds a Python float reduction over every tensor (the",
            "same for both arms, and dearer than either load). The target refers to `load`: that is what \"opening",
            "and reading\" measures, and in it both arms read every byte (`load_file` by copying, the store by",
            'hashing) -- except verify="once" after the first load of a file in the process, which reads no',
            "tensor byte at all, so those rows are an upper bound on what skipping the hash buys.",
            "",
        ]
    il_data, _ = load("interleaved.json")
    if il_data:
        c, m, x = il_data["cem_us"], il_data["store_ms"], il_data["store_speedup"]
        files = il_data["store_files"]
        lines += [
            "## Interleaved cross-check (`benches/interleaved.py`: arms alternate round by round)",
            "",
            f"CEM: Rust {c['rust']:.1f} us, NumPy {c['numpy']:.1f} us per iteration: {c['numpy'] / c['rust']:.2f}x.",
            "",
            f"Store: {files['count']} files of {files['bytes_each']:,} bytes, {files['page_cache']}; "
            f"{il_data['store_rounds']} rounds. Times: median [quartiles] ms; speed-up: load_file's time over the "
            "arm's in the same round, median [quartiles] over the rounds.",
            "",
            "| store arm | load: ms | load: load_file / it | load+touch: ms | load+touch: load_file / it |",
            "|---|---|---|---|---|",
        ]

        def cell(d, unit=""):
            return f"{d['median']:.2f}{unit} [{d['p25']:.2f}-{d['p75']:.2f}]"

        for arm in ("always/get", "always/get_many", "once/get", "once/get_many", "load_file"):
            a, b = m[f"{arm}/load"], m[f"{arm}/load+touch"]
            xa = cell(x[f"{arm}/load"], "x") if arm != "load_file" else "1x"
            xb = cell(x[f"{arm}/load+touch"], "x") if arm != "load_file" else "1x"
            lines.append(f"| {arm} | {cell(a)} | {xa} | {cell(b)} | {xb} |")
        floor = "bytes only/load"
        lines += [
            f"| reference: map each store file and sum its bytes (numpy, one core; no hash, parse or tensors) | "
            f"{cell(m[floor])} | {cell(x[floor], 'x')} | | |",
            "",
            f"Load average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in il_data['loadavg_1_5_15_at_end'])}.",
            "",
        ]
    lines += [
        "## Before and after",
        "",
        "Branch rust-perf:",
        "",
        "- CEM ask+tell: 41.1 us vs NumPy 129.7 us (3.15x) before; see the tables above for after.",
        "- Store: before, only `load+touch` was measured, with a touch per adapter: 72.6 ms vs 66.8 ms (0.92x).",
        "  Measured again before the changes in the `load` variant (interleaved, same machine): 35.3 ms vs",
        "  33.0 ms (0.93x).",
        "",
        "Branch store-speed (store `load`, interleaved; three runs of the code before, main at ef9f288, alternated",
        "with three runs of the code after, same machine, load average 1.0-1.6):",
        "",
        '- before: a loop of `get` 36.9-37.7 ms against `load_file` 36.5-37.2 ms, 0.97-1.00x; verify="once" 2.46-2.49x',
        "  (ratios of medians; that script kept no per-round times);",
        '- after: a loop of `get` 1.16-1.24x, `get_many` 1.28-1.64x; verify="once" 2.72-2.78x with `get`, 2.88-3.01x',
        "  with `get_many` (medians of the per-round speed-up; the tables above are the last of the three runs).",
        "",
    ]
    lines += [
        "## Where the targets stand, and why (measured, issue 4)",
        "",
        '- **Store (target 3x): missed with the default verify="always": about 1.2x with a loop of `get`, 1.3-1.7x',
        "  with `get_many` (which needs the second core free); 2.7-3.0x with the opt-in verify=\"once\".** On this machine a",
        "  load that looks at every byte of a fresh zero-copy mapping costs more than a third of `load_file`, hash",
        "  or no hash:",
        "  - the reference row of the interleaved table, which maps each store file and sums its bytes with",
        "    numpy and does nothing else, is itself only 2.7-3.0x faster than `load_file`;",
        "  - `rust/examples/store_floor.rs` over the same 100 files (118.5 MB): XXH3-128 over mappings already",
        "    populated takes 14.9 ms on one core, 9.6 ms on two; with a fresh private mapping per file, as a",
        "    zero-copy load needs (page faults in, unmap after), 22.3 ms and 16.7 ms. `load_file` took 34-44 ms in",
        "    these runs, so 3x leaves 11-15 ms. The page-table work of mapping and unmapping scales poorly over the",
        "    two vCPUs;",
        "  - the hash itself is not the limit: XXH3 (AVX2) runs at about 36 GB/s over data in cache and 8-10 GB/s",
        "    from memory, about what a plain sum reaches; BLAKE3 (AVX-512) was 1.6x slower from memory.",
        "  What changed: the content hash is computed by twox-hash, which picks AVX2 at run time (xxhash-rust's",
        "  portable build was SSE2; the same XXH3-128, so stores written before verify unchanged: tested on a",
        "  store written by the old code); `get_many` takes the lock and reads the index once, maps every file,",
        "  and checks them on the rayon pool while Python turns the adapters already checked into tensors (the",
        "  caller checks a file itself when the pool has not started it); `get` returns the index entry without",
        "  its tensor list, whose two containers per tensor, kept alive over a batch, made Python's garbage",
        "  collector walk the whole heap about once every 14 batches of 100 (a third of `get_many`'s time);",
        "  `verify()` checks files in parallel. What would reach 3x: not hashing on every load (verify=\"once\",",
        "  2.7-3.0x: the mappings and the Python objects remain), or giving up a fresh writable",
        "  mapping per load (read-only mappings shared between loads would skip the page-table work but make",
        "  the tensors read-only); neither is the default the issue asks for.",
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
        "OMP_NUM_THREADS=1 PYTHONPATH=python python -m pytest benches/bench_store.py --benchmark-only --benchmark-json=benches/results/store.json",
        "OMP_NUM_THREADS=1 PYTHONPATH=python python benches/interleaved.py",
        "PYTHONPATH=python:benches python -c 'import bench_store; bench_store.write_adapters(\"/tmp/store_bench\")'",
        "cargo run --release --example store_floor -p ssm-offset-core -- /tmp/store_bench/store",
        "python benches/report.py",
        "```",
    ]
    with open(os.path.join(HERE, "rust_core.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
