"""`ssm-offset eval`: score a model (optionally with an adapter) on held-out records by generation."""
from __future__ import annotations

import json


def run(args) -> int:
    from ssm_offset.data import TASK_METRICS, Tokenizer, load_records, load_task, spider_database
    from ssm_offset.data.tasks import template as task_template
    from ssm_offset.eval import evaluate_generation

    model = load(args.model, args.adapter)
    tokenizer = Tokenizer(args.tokenizer)
    if args.task:
        records = load_task(args.task, args.root, "test")
    elif args.data:
        records = load_records(args.data)
    else:
        raise ValueError("give --data FILE or --task NAME (with --root)")
    template = args.template or args.task
    if not template:
        raise ValueError("give --template (a task name or a JSON {prompt, target, eos})")
    template = json.loads(template) if template.lstrip().startswith("{") else task_template(template)
    metric = args.metric or TASK_METRICS.get(args.task or args.template or "", "")
    if not metric:
        raise ValueError("give --metric")
    records = records[: args.limit] if args.limit else records
    dbs = [spider_database(args.root, r["db_id"]) for r in records] if metric == "execution_accuracy" else None
    scores, predictions = evaluate_generation(model, tokenizer, records, template, metric, args.max_new_tokens,
                                              args.num_beams, databases=dbs)
    print(json.dumps({"records": len(records), **scores}, indent=2))
    if args.predictions:
        with open(args.predictions, "w") as f:
            for p in predictions:
                f.write(json.dumps({"prediction": p}) + "\n")
    return 0


def load(model_path: str, adapter: str = ""):
    """A model directory, with the adapter directory on top if one is given."""
    from ssm_offset.models import load_model
    from ssm_offset.peft import PeftModel

    model = load_model(model_path)
    return PeftModel.from_pretrained(model, adapter) if adapter else model


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a model / adapter on held-out records by generation")
    p.add_argument("--model", required=True, help="Hugging Face-format model directory")
    p.add_argument("--adapter", default="", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--data", default="", help=".jsonl / .json / .csv / .parquet records")
    p.add_argument("--task", default="", help="a task of the shared data layout (test split): spider, samsum, dart, ...")
    p.add_argument("--root", default="", help="the shared data directory (for --task and Spider's databases)")
    p.add_argument("--template", default="", help="a task name or a JSON template")
    p.add_argument("--metric", default="", help="rouge, bleu, exact_match, accuracy, f1, matthews, execution_accuracy")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--predictions", default="", help="write the predictions to this JSONL file")
    p.set_defaults(func=run)
