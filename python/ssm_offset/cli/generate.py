"""`ssm-offset generate`: continue prompts with a model (optionally with an adapter): greedy, beam or sampled."""
from __future__ import annotations


def run(args) -> int:
    from ssm_offset.data import Tokenizer
    from ssm_offset.data.files import decode
    from ssm_offset.eval import generate_texts
    from ssm_offset.models import generate

    from .evaluate import load

    model = load(args.model, args.adapter).eval()
    tokenizer = Tokenizer(args.tokenizer)
    prompts = args.prompt or []
    if not prompts:
        raise ValueError("give at least one --prompt")
    if args.sample:
        ids = [tokenizer.encode(p) for p in prompts]
        eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        out = generate(model, ids, args.max_new_tokens, do_sample=True, temperature=args.temperature,
                       top_p=args.top_p, eos_token_id=eos, pad_token_id=tokenizer.pad_id, seed=args.seed)
        texts = [decode(tokenizer, [t for t in row.tolist() if t not in eos]) for row in out]
    else:
        texts = generate_texts(model, tokenizer, prompts, args.max_new_tokens, args.num_beams)
    for p, t in zip(prompts, texts):
        print(f"{p}{t}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue prompts with a model / adapter")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default="")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--sample", action="store_true")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
