"""`ssm-offset adapt --store DIR --few-shot FILE --model DIR`: few-shot self-adaptation (Transformer²) — CEM
over mixtures of the store's experts on labelled examples; prints the chosen mixture, the metric before
(base model) and after, each expert alone, and the time taken."""
from __future__ import annotations

import json
import os


def run(args) -> int:
    import torch

    from ssm_offset.adapt.experts import load_experts
    from ssm_offset.adapt.fewshot import DEFAULT_TEMPLATE, FewShotError, FewShotSet, few_shot_adapt, use_precision
    from ssm_offset.data import read_jsonl
    from ssm_offset.models import load_model

    tokenizer = args.tokenizer or os.path.join(args.model, "tokenizer.json")
    if not os.path.isfile(tokenizer):
        raise FileNotFoundError(f"{tokenizer}: no tokenizer; pass --tokenizer FILE (a tokenizer.json)")
    records = list(read_jsonl(args.few_shot))
    if not records:
        raise FewShotError(f"{args.few_shot}: no few-shot examples")
    template = json.loads(args.template) if args.template else DEFAULT_TEMPLATE
    data = FewShotSet.from_records(records, tokenizer, template, max_length=args.max_length)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if args.precision != "auto" else ("tf32" if device.startswith("cuda") else "fp32")
    dtype = use_precision(precision)
    model = load_experts(load_model(args.model, device=device), args.store,
                         args.experts.split(",") if args.experts else None, tag=args.tag)
    model = model.to(dtype)  # after the experts are matched to the base by its (fp32) fingerprint
    names = args.experts.split(",") if args.experts else [n for n in model.peft_config]
    result = few_shot_adapt(model, names, data, granularity=args.granularity, objective=args.objective,
                            population=args.population, iterations=args.iterations, seed=args.seed)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"few-shot adaptation on {len(data)} examples, {len(names)} experts, granularity {args.granularity}, "
          f"objective {args.objective}, population {args.population} × {args.iterations} generations, "
          f"{precision} on {device}")
    print("mixture α:" + ("" if result.alpha.shape[0] == 1 else f" ({result.alpha.shape[0]} groups; mean shown)"))
    for k, n in enumerate(names):
        print(f"  {n:<20} {result.alpha[:, k].mean():.3f}")
    fmt = lambda r: f"accuracy {r['accuracy']:.3f}  label log-likelihood/token {r['loglik']:.4f}"
    print(f"before (base model): {fmt(result.before)}")
    for n, r in result.experts_alone.items():
        print(f"expert {n:<13}: {fmt(r)}")
    print(f"after  (mixture)   : {fmt(result.after)}")
    print(f"time: {result.seconds:.2f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("adapt", help="few-shot self-adaptation: CEM mixture of stored experts")
    p.add_argument("--store", required=True, help="expert store directory")
    p.add_argument("--few-shot", required=True, help='JSONL of labelled examples ({"input": …, "output": …})')
    p.add_argument("--model", required=True, help="the base model directory")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the model directory's)")
    p.add_argument("--experts", help="comma-separated expert names (default: all, or those tagged --tag)")
    p.add_argument("--tag")
    p.add_argument("--template", help='JSON template, default {"prompt": "{input}###", "target": "{output}", "eos": true}')
    p.add_argument("--granularity", default="expert", choices=["expert", "layer", "matrix"])
    p.add_argument("--objective", default="accuracy", choices=["accuracy", "loss"])
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int)
    p.add_argument("--device")
    # "auto" and the names of ssm_offset.adapt.PRECISIONS, spelled out: registering a command imports no torch
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "tf32", "bf16"],
                   help="auto: TF32 matmuls on a GPU, fp32 on CPU; bf16 runs the model in bf16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
