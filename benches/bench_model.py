"""Training throughput and peak memory on a Mamba-130M-shaped model (24 layers, d_model 768, vocab 50,280,
random weights), batch 8 × 1024 random tokens, bf16 autocast, AdamW step included.

Arms:
  ours state-offset-h            ssm_offset MambaForCausalLM + State-offset Tuning (h), our CUDA scan, the loss
                                 as our Trainer takes it (return_logits=False: the head and cross-entropy in
                                 slices of rows, no whole fp32 logits)
  ours ... + torch.compile       the same, its forward (and so backward) under torch.compile (inductor, default
                                 mode) as `TrainConfig(compile=True)` / `ssm-offset train --compile` runs it;
                                 the warm-up steps compile, and the first one's seconds are printed
  reference on mamba_ssm         the same model, its scan replaced by mamba_ssm's selective_scan_fn +
                                 einsum("bdl,bnl,dn->bdl", silu(z), C, h') (the paper's reference approach),
                                 the loss over whole logits as the reference code takes it
  transformers full FT           transformers MambaForCausalLM, fast path (mamba_ssm + causal-conv1d kernels)
  transformers + peft LoRA       the same + peft LoRA r=8, alpha 8, dropout 0.1 on x_proj, in_proj, dt_proj
The script first checks that transformers' fast path is active (a profiled training step must run
mamba_ssm's selective-scan and causal-conv1d kernels) and stops otherwise. tokens/s over 10 timed steps
after 3 warm-up steps; peak = torch.cuda.max_memory_allocated over the arm. A torch-profiler table of one
step of each of our arms shows where its time goes.

    python benches/bench_model.py [--out benches/results/model-h100] [--steps 10]
"""
from __future__ import annotations

import argparse
import gc
import platform
import sys
import time

import torch
import torch.nn.functional as F

from _results import emit

BATCH, LENGTH, VOCAB = 8, 1024, 50280
SHAPE = dict(vocab_size=VOCAB, hidden_size=768, state_size=16, num_hidden_layers=24, expand=2, conv_kernel=4)


def _ours(reference_scan: bool):
    from ssm_offset.models import MambaConfig, MambaForCausalLM
    from ssm_offset.models import mamba as mamba_module
    from ssm_offset.peft import config_for, get_peft_model

    if reference_scan:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                 state_offset=None, y_offset=None, return_final_state=False, seq_idx=None):
            y, last = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
            if state_offset is not None:
                y = y + torch.einsum("bdl,bnl,dn->bdl", F.silu(z), C, state_offset.to(y.dtype))
            return (y, last) if return_final_state else y

        mamba_module.selective_scan = scan
    else:
        from ssm_offset.ops import selective_scan

        mamba_module.selective_scan = selective_scan
    torch.manual_seed(0)
    model = get_peft_model(MambaForCausalLM(MambaConfig(**SHAPE)), config_for("state-offset-h"))
    with torch.no_grad():  # a trained-looking, non-zero offset
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02)
    return model.cuda()


def _transformers(lora: bool):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(**SHAPE))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1,
                                                 target_modules=["x_proj", "in_proj", "dt_proj"]))
    return model.cuda()


SLICED_LOSS = dict(return_logits=False)  # what ssm_offset.train.token_loss_sum asks of the model
# name -> (model builder, extra forward arguments, torch.compile the forward)
ARMS = {
    "ours state-offset-h": (lambda: _ours(False), SLICED_LOSS, False),
    "ours state-offset-h + torch.compile": (lambda: _ours(False), SLICED_LOSS, True),
    "reference on mamba_ssm (scan + einsum offset)": (lambda: _ours(True), {}, False),
    "transformers full FT": (lambda: _transformers(False), {}, False),
    "transformers + peft LoRA (x_proj, in_proj, dt_proj)": (lambda: _transformers(True), {}, False),
}


def _step(model, opt, ids, extra=None):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids, **(extra or {}))
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _kernel_names(model, opt, ids, extra=None):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _step(model, opt, ids, extra)
        torch.cuda.synchronize()
    return prof, [e.key for e in prof.key_averages()]


def check_fast_path():
    """Stop unless transformers' Mamba training step runs mamba_ssm's and causal-conv1d's kernels."""
    model = _transformers(False)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, VOCAB, (2, 256), device="cuda")
    _step(model, opt, ids)
    _, names = _kernel_names(model, opt, ids)
    scan = [n for n in names if "selective_scan" in n]
    conv = [n for n in names if "causal_conv1d" in n]
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    if not scan or not conv:
        sys.exit(f"bench_model: transformers' fast path is not active (selective-scan kernels: {scan[:2]}, "
                 f"causal-conv1d kernels: {conv[:2]}); build mamba_ssm and causal-conv1d "
                 "(benches/gpu/build_baselines.sh) and run again")
    return scan[:2] + conv[:2]


def run_arm(name, steps, profile_table=False):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    build, extra, compiled = ARMS[name]
    model = build()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    # compiled: the forward goes through the compiled wrapper; the optimiser holds the model's own parameters
    net = torch.compile(model) if compiled else model
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = [torch.randint(0, VOCAB, (BATCH, LENGTH), device="cuda", generator=gen) for _ in range(2)]
    warm = []
    for i in range(3):  # a compiled arm compiles here, in the first step: outside the timed steps
        t0 = time.perf_counter()
        _step(net, opt, ids[i % 2], extra)
        torch.cuda.synchronize()
        warm.append(time.perf_counter() - t0)
    if compiled:
        print(f"{name}: torch.compile took {warm[0] - warm[-1]:.1f} s (first warm-up step {warm[0]:.1f} s, "
              f"last {warm[-1]:.3f} s)", flush=True)
    start = time.perf_counter()
    for i in range(steps):
        _step(net, opt, ids[i % 2], extra)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e9
    table = None
    if profile_table:
        prof, _ = _kernel_names(net, opt, ids[0], extra)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    row = dict(arm=name, tokens_per_s=BATCH * LENGTH * steps / elapsed, step_ms=1e3 * elapsed / steps,
               peak_gb=peak, trainable=sum(p.numel() for p in params),
               compile_s=warm[0] - warm[-1] if compiled else None)
    del model, net, opt, params, ids
    gc.collect()
    torch.cuda.empty_cache()
    return row, table


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    fast = check_fast_path()
    print("transformers fast path active:", fast, flush=True)
    rows, tables = [], {}
    for name in ARMS:
        row, t = run_arm(name, args.steps, profile_table=name.startswith("ours"))
        if t is not None:
            tables[name] = t
        rows.append(row)
        print(f"{name:55s} {row['tokens_per_s']:10,.0f} tok/s  {row['step_ms']:7.1f} ms/step  "
              f"peak {row['peak_gb']:5.2f} GB  trainable {row['trainable']:,}", flush=True)
    lora = next(r for r in rows if "LoRA" in r["arm"])
    for r in rows:
        r["vs_peft_lora"] = r["tokens_per_s"] / lora["tokens_per_s"]
    import transformers

    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                transformers=transformers.__version__, python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"), fast_path_kernels=fast,
                setup=f"Mamba-130M shape {SHAPE}, batch {BATCH}x{LENGTH}, bf16 autocast, AdamW lr 1e-4, "
                      f"{args.steps} timed steps after 3 warm-up",
                command="python3 benches/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    lines = [f"# Training throughput, Mamba-130M shape, {meta['device']}", "",
             f"`{meta['command']}` — torch {meta['torch']} (CUDA {meta['cuda']}), transformers "
             f"{meta['transformers']}, {meta['date']}. {meta['setup']}.", "",
             "| arm | tokens/s | × peft LoRA | ms/step | peak GB | trainable params |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['tokens_per_s']:,.0f} | {r['vs_peft_lora']:.2f} | {r['step_ms']:.1f} | "
                     f"{r['peak_gb']:.2f} | {r['trainable']:,} |")
    for name, t in tables.items():
        lines += ["", f"Where the step of `{name}` goes (torch profiler, one step, sorted by CUDA time):", "",
                  "```", t, "```"]
    compiled = [r for r in rows if r["compile_s"] is not None]
    if compiled:
        lines += ["", "torch.compile time (first warm-up step minus the last, not in the timings): " +
                  ", ".join(f"{r['arm']} {r['compile_s']:.1f} s" for r in compiled)]
    emit(lines, args.out, meta=meta, rows=rows, profiles=tables)


if __name__ == "__main__":
    main()
