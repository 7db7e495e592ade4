"""Few-shot adaptation (Transformer² CEM): batched per-row evaluation of a whole population against the
reference's sequential recompose-per-candidate, on identical populations.

One adaptation = population 32 × 50 generations × 10 examples, K = 3 experts. Both arms score the *same*
populations (lock-step: each generation's population is scored by both arms, then told to the CEM with the
batched arm's fitness), reuse the same tokenized examples, embeddings and SVD factors, and share the metric
code; only the mixture's application differs:

  batched     one forward of P·E rows, row (p, e) mixing candidate p's adapters (`row_adapters`)
  sequential  per candidate: rebuild the mixed weights (SVF W' = U diag(σ⊙z'·s) Vᵀ, or the state tensors),
              then one forward of the E examples — what Transformer²'s implementation does

The script checks that every candidate gets the same fitness from both arms (fp32, ≤ 1e-5) and that the
elites agree except at exact ties, and reports time per adaptation, the speed-up, and where the time goes.

`--precisions fp32,tf32,bf16` times both arms under each setting: strict fp32 (the equality check above),
TF32 matmuls (torch.backends.cuda.matmul.allow_tf32, the usual GPU setting) and a bf16 model. Both arms
always run under the same setting; with TF32/bf16 the two arms' fitness differ by rounding (reported, not
asserted: the batched arm's SVF runs x V then U, the sequential one the recomposed W).

    PYTHONPATH=python python benches/bench_adapt.py                       # CPU, tiny model
    PYTHONPATH=python python benches/bench_adapt.py --shape mamba-130m     # the GPU arm (CUDA when present)
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from ssm_offset.adapt import CEM, FewShotSet, PopulationEvaluator, use_precision
from ssm_offset.models import MambaConfig, MambaForCausalLM
from ssm_offset.peft import config_for, get_peft_model
from _results import emit

SHAPES = {
    # a tiny model with the GPT-NeoX vocabulary (the LM head's size is realistic)
    "tiny": dict(vocab_size=50280, hidden_size=64, state_size=16, num_hidden_layers=2),
    "mamba-130m": dict(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=24),
}
EXPERTS = ["e0", "e1", "e2"]


def build(shape: str, method: str, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    base = MambaForCausalLM(MambaConfig(**SHAPES[shape])).to(device=device, dtype=dtype).eval()
    model = get_peft_model(base, config_for(method), adapter_name=EXPERTS[0])
    for i, name in enumerate(EXPERTS):
        if i:
            model.add_adapter(name, config_for(method))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if name in pname.split("."):
                    p.add_((torch.randn(p.shape, generator=g) * 0.2).to(p))
    return model


def examples(n: int, prompt: int, label: int, vocab: int, seed: int = 0) -> FewShotSet:
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(10, vocab, (prompt + int(torch.randint(-8, 9, (1,), generator=g)),), generator=g).tolist(),
              torch.randint(10, vocab, (label,), generator=g).tolist()) for _ in range(n)]
    return FewShotSet.from_ids(pairs, pad_id=0, eos_id=0)


def run(args, method: str, granularity: str, precision: str = "fp32") -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args.shape, method, device, use_precision(precision))
    data = examples(args.examples, args.prompt_len, args.label_len, SHAPES[args.shape]["vocab_size"])
    ev_b = PopulationEvaluator(model, EXPERTS, data, granularity)
    ev_s = PopulationEvaluator(model, EXPERTS, data, granularity)
    cem = CEM(dim=ev_b.dim, population=args.population, mean=1.0 / len(EXPERTS), std=0.5, seed=0)
    # warm-up (allocator, kernels' first calls), not timed
    warm = cem.ask()[:4]
    ev_b.evaluate(warm), ev_s.evaluate_sequential(warm)
    ev_b.profile.clear(), ev_s.profile.clear()
    t_b = t_s = 0.0
    worst, elite_mismatch, n_elite = 0.0, 0, max(1, round(0.2 * args.population))
    for _ in range(args.generations):
        pop = cem.ask()
        t0 = time.perf_counter()
        fb = ev_b.evaluate(pop)["fitness"]
        t1 = time.perf_counter()
        fs = ev_s.evaluate_sequential(pop)["fitness"]
        t2 = time.perf_counter()
        t_b, t_s = t_b + t1 - t0, t_s + t2 - t1
        worst = max(worst, float(np.abs(fb - fs).max()))
        eb, es = set(np.argsort(-fb, kind="stable")[:n_elite]), set(np.argsort(-fs, kind="stable")[:n_elite])
        if eb != es:
            # allowed only at exact ties of the batched fitness at the elite boundary
            cut = np.sort(fb)[::-1][n_elite - 1]
            if not all(abs(fb[i] - cut) < 1e-5 for i in eb ^ es):
                elite_mismatch += 1
        cem.tell(fb)
    out = {
        "method": method, "granularity": granularity, "precision": precision, "alpha_dim": ev_b.dim, "device": device,
        "batched_s": t_b, "sequential_s": t_s, "speedup": t_s / t_b,
        "max_fitness_diff": worst, "elite_mismatches_beyond_ties": elite_mismatch,
        "forwards_batched": ev_b.forwards, "forwards_sequential": ev_s.forwards,
        "profile_batched": ev_b.profile, "profile_sequential": ev_s.profile,
        "best_fitness": float(cem.best[1]),
    }
    if args.torch_profile:
        out["top_ops_batched"] = top_ops(ev_b, cem.ask(), device)
    return out


def top_ops(ev, pop, device) -> list:
    """Self time of the batched arm's ten heaviest operators over one generation (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        ev.evaluate(pop)
    events = prof.key_averages()
    # torch >= 2.4 names the GPU column "device"; older releases "cuda"
    key = "self_cpu_time_total" if device != "cuda" else (
        "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total")
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:15]
    return [(e.key, round(getattr(e, key) / 1e3, 2), e.count) for e in rows]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--methods", default="svf,state-offset-h")
    p.add_argument("--granularities", default="expert,layer")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, tf32, bf16")
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--generations", type=int, default=50)
    p.add_argument("--examples", type=int, default=10)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--label-len", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device")
    p.add_argument("--torch-profile", action="store_true")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(args, m, g, pr) for pr in args.precisions.split(",") for m in args.methods.split(",")
            for g in args.granularities.split(",")]
    meta = {"shape": args.shape, **SHAPES[args.shape], "population": args.population, "generations": args.generations,
            "examples": args.examples, "prompt_len": args.prompt_len, "label_len": args.label_len,
            "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    lines = [f"# few-shot CEM: batched vs sequential ({args.shape}, {rows[0]['device']})", "",
             "```", json.dumps(meta), "```", "",
             "| precision | method | α per | dim | batched s | sequential s | speed-up | max |Δ fitness| | elite mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['method']} | {r['granularity']} | {r['alpha_dim']} | {r['batched_s']:.2f} | "
                     f"{r['sequential_s']:.2f} | {r['speedup']:.1f}× | {r['max_fitness_diff']:.1e} | "
                     f"{r['elite_mismatches_beyond_ties']} |")
    lines += ["", "Where the time goes (seconds over the whole adaptation):", ""]
    for r in rows:
        for arm in ("batched", "sequential"):
            prof = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r[f"profile_{arm}"].items(), key=lambda kv: -kv[1]))
            lines.append(f"- {r['precision']} {r['method']}/{r['granularity']} {arm}: {prof}")
        if "top_ops_batched" in r:
            lines.append(f"  - top ops (batched, one generation, ms self time, calls): {r['top_ops_batched']}")
    emit(lines, args.out, meta=meta, rows=rows)


if __name__ == "__main__":
    main()
