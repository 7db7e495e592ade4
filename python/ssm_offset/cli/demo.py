"""`ssm-offset demo`: the embedded default job. It needs no network, no GPU and no data outside the package.

Until the training API lands this prints the installation report and generates from a tiny random Mamba
and Mamba-2 through both execution paths (parallel prefill, recurrent steps), checking they agree.
"""
from __future__ import annotations

import time


def run(args) -> int:
    import torch

    from ssm_offset.models import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    from .info import collect

    for key, value in collect().items():
        print(f"{key:<18}{value}")
    torch.manual_seed(args.seed)
    prompts = [torch.randint(0, 256, (n,)) for n in (5, 9, 3)]
    for name, model in [
        ("mamba", MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=2))),
        ("mamba2", Mamba2ForCausalLM(Mamba2Config(
            vocab_size=256, hidden_size=64, state_size=16, num_hidden_layers=2, num_heads=8, head_dim=16, n_groups=1,
        ))),
    ]:
        model.eval()
        start = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=args.max_new_tokens, eos_token_id=[])
        seconds = time.perf_counter() - start
        # The recurrent path must agree with the parallel forward over the generated text.
        full = torch.cat([prompts[0], out[0]])[None]
        with torch.no_grad():
            parallel = model(full).logits[0, len(prompts[0]) - 1 : -1].argmax(-1)
        agree = parallel.tolist() == out[0].tolist()
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters (random weights), "
              f"{len(prompts)} prompts × {args.max_new_tokens} tokens in {seconds:.2f} s; "
              f"recurrent == parallel: {agree}")
        for p, o in zip(prompts, out):
            print(f"  {p.tolist()} → {o.tolist()}")
        if not agree:
            return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the embedded default job (runs anywhere, no network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.set_defaults(func=run)
