"""`ssm-offset experts list|add|remove --store DIR`: the expert library (Rust adapter store) of self-adaptation."""
from __future__ import annotations

import json


def _list(args) -> int:
    from ssm_offset.adapt.experts import list_experts
    from ssm_offset.store import AdapterStore

    model = None
    if args.model:
        from ssm_offset.models import load_model

        model = load_model(args.model)
    entries = list_experts(AdapterStore(args.store, create=False), model, tag=args.tag)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    if not entries:
        print(f"no experts in {args.store}" + (" for this model" if model is not None else ""))
        return 0
    rows = [(e["name"], e.get("method") or "", e.get("task") or "", ",".join(e.get("tags") or []),
             json.dumps(e.get("metrics") or {}), (e.get("base_fingerprint") or "")[:16]) for e in entries]
    head = ("name", "method", "task", "tags", "metrics", "base")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def _add(args) -> int:
    from ssm_offset.adapt.experts import save_expert
    from ssm_offset.models import load_model
    from ssm_offset.peft import PeftModel

    metrics = json.loads(args.metrics) if args.metrics else None
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"--metrics: expected a JSON object, got {args.metrics!r}")
    peft = PeftModel.from_pretrained(load_model(args.model), args.adapter, adapter_name=args.name)
    entry = save_expert(args.store, peft, args.name, task=args.task, tags=args.tag or (), metrics=metrics,
                        overwrite=args.overwrite)
    print(f"added expert {entry['name']!r} ({entry.get('method')}, task {args.task!r}) to {args.store}")
    return 0


def _remove(args) -> int:
    from ssm_offset.store import AdapterStore

    store = AdapterStore(args.store, create=False)
    missing = [n for n in args.names if n not in store]
    if missing:
        raise KeyError(f"no expert(s) {missing} in {args.store}")
    for n in args.names:
        store.delete(n)
        print(f"removed expert {n!r}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("experts", help="list, add or remove experts in an expert store")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", help="the experts in a store")
    ls.add_argument("--store", required=True)
    ls.add_argument("--model", help="only experts built for this base model")
    ls.add_argument("--tag")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    add = verbs.add_parser("add", help="store a PEFT adapter directory as an expert")
    add.add_argument("--store", required=True)
    add.add_argument("--name", required=True, help="expert name (a Python identifier)")
    add.add_argument("--adapter", required=True, help="directory with adapter_config.json + adapter_model.safetensors")
    add.add_argument("--model", required=True, help="the base model the adapter was trained on")
    add.add_argument("--task", help="the task (category) the expert was trained for")
    add.add_argument("--tag", action="append", help="extra tag (repeatable)")
    add.add_argument("--metrics", help='JSON object, e.g. \'{"accuracy": 0.8}\'')
    add.add_argument("--no-overwrite", dest="overwrite", action="store_false")
    add.set_defaults(func=_add)
    rm = verbs.add_parser("remove", help="delete experts from a store")
    rm.add_argument("--store", required=True)
    rm.add_argument("names", nargs="+")
    rm.set_defaults(func=_remove)
