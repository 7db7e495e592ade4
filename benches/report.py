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
    return data, {b["name"]: b for b in data["benchmarks"]}


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
        a, b = st["test_adapter_store"]["stats"], st["test_safetensors_load_file"]["stats"]
        lines += [
            "## Store: open and read 100 adapters (24 x 1536 x 16 bf16 each, 1.2 MB), touching every byte",
            "",
            "| implementation | median ms | mean ms |",
            "|---|---|---|",
            f"| AdapterStore.get (mmap, content hash checked) | {a['median'] * 1e3:.1f} | {a['mean'] * 1e3:.1f} |",
            f"| safetensors.torch.load_file loop | {b['median'] * 1e3:.1f} | {b['mean'] * 1e3:.1f} |",
            "",
            f"Target >= 3x faster: measured {b['median'] / a['median']:.2f}x (medians).",
            "",
        ]
    lines += [
        "## Where targets are missed, and why (measured, issue 4)",
        "",
        "- **Store (target 3x, missed: about 1x).** Per 1.2 MB adapter, `load_file` costs about 0.34 ms (one",
        "  copy out of the page cache) and the touch (a float reduction over every tensor) about 0.26 ms for",
        "  both. `AdapterStore.get` costs about as much as `load_file`: the content-hash check is one full pass",
        "  over the bytes (XXH3-128, about 0.15-0.2 ms; BLAKE3 was 2-3x slower) and the first touch of a fresh",
        "  private mapping pays a page fault per 4 KiB page (MADV_POPULATE_READ did not help). With the touch",
        "  common to both, 3x would need load + touch under 0.2 ms, less than the touch alone. Better ratios need",
        "  dropping the per-load hash pass (e.g. verifying each immutable, content-addressed file once per",
        "  process); not done, since the issue asks for the check on every load.",
        "- **CEM (target 5x, missed: about 3x).** 9,216 normal draws per iteration dominate (rand_distr's",
        "  ziggurat on xoshiro256++, split over the 2 cores in 4 fixed blocks so results do not depend on the",
        "  thread count); NumPy's `standard_normal` is about 3.5x slower per draw on this CPU and its Python",
        "  call overhead is the rest. A faster sampler (f32 ziggurat, SIMD generator) is the next step.",
        "- The machine is shared with other sessions (see the load average): rounds vary by up to 2x; the",
        "  tokenization table uses each implementation's fastest round as its speed and shows the mean too.",
        "",
    ]
    if machine:
        lines += ["## Machine", "", "```", json.dumps(machine, indent=1), "```", ""]
    lines += [
        "## Commands",
        "",
        "```",
        "cargo build --release --features python,pyo3/extension-module -p ssm-offset-core",
        "cp target/release/libssm_offset_core.so python/ssm_offset/_core.abi3.so",
        "PYTHONPATH=python python -m pytest benches/bench_tokenize.py --benchmark-only --benchmark-json=benches/results/tokenize.json",
        "PYTHONPATH=python python -m pytest benches/bench_cem.py --benchmark-only --benchmark-json=benches/results/cem.json",
        "PYTHONPATH=python python -m pytest benches/bench_store.py --benchmark-only --benchmark-json=benches/results/store.json",
        "python benches/report.py",
        "```",
    ]
    with open(os.path.join(HERE, "rust_core.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
