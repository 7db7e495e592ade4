"""`ssm-offset compare CONFIG.toml --methods state-offset-h,lora-s6,prompt [--section.key VALUE ...]`: the same
data, base model and budget for several methods, plus the untuned base model. Prints a table (metric, held-out
loss, trainable parameters, time) and saves a PNG of the loss curves; results.json holds the numbers.

`ssm-offset compare --grid GRID.toml --workers N [--max-minutes M]`: the same comparison as a resumable grid of
(base, task, method, learning rate, seed) cells on prepared token arrays, run by worker processes over the visible
GPUs, each finished cell appended to a JSONL file (ssm_offset/cli/grid.py; benches/quality/ uses it)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List


def untuned(run, log=print) -> Dict[str, Any]:
    """The base model before any tuning, scored like the methods."""
    from ssm_offset.data import Tokenizer
    from ssm_offset.eval import evaluate_generation
    from ssm_offset.models import load_model
    from ssm_offset.train import Trainer
    from ssm_offset.train.run import load_data

    tokenizer = Tokenizer(run.data.tokenizer)
    examples, eval_examples, eval_records, tpl, task_metric = load_data(run.data, tokenizer, log=lambda *_: None)
    model = load_model(run.model.path)
    row: Dict[str, Any] = {"method": "untuned", "trainable_params": 0, "seconds": 0.0}
    if eval_examples is not None:
        row["eval_loss"] = Trainer(model, run.train, examples, eval_examples, pad_id=tokenizer.pad_id).evaluate()["eval_loss"]
    metric = run.eval.metric or task_metric
    if metric and eval_records:
        limit = run.eval.limit or len(eval_records)
        scores, _ = evaluate_generation(model, tokenizer, eval_records[:limit], tpl, metric, run.eval.max_new_tokens,
                                        run.eval.num_beams)
        row.update(scores)
    return row


def compare(run, methods: List[str], log=print) -> Dict[str, Any]:
    from ssm_offset.peft import SHORT_NAMES
    from ssm_offset.train.run import fine_tune

    unknown = [m for m in methods if m not in SHORT_NAMES]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}; known: {sorted(SHORT_NAMES)}")
    out = Path(run.train.output_dir)
    rows = [untuned(run, log)]
    for name in methods:
        r = copy.deepcopy(run)
        r.method.name = name
        r.method.options = dict(run.method.options) if run.method.name == name else {}
        r.train = r.train.replace(output_dir=str(out / name), lr=METHOD_LR.get(name, run.train.lr)
                                  if run.train.lr == LR_AUTO else run.train.lr)
        log(f"\n== {name} ==")
        rows.append(fine_tune(r, log))
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_losses(out, [r for r in rows if r.get("log")], out / "loss_curves.png")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"rows": rows, "plot": plot}, indent=2, default=str) + "\n")
    tmp.replace(out / "results.json")
    return {"rows": rows, "plot": plot}


#: lr = 0 in [train] means: each method's own learning rate — above the State-offset paper's ranges, which are
#: for 130M+ models and thousands of steps; these suit the demo's 1M-parameter model and ~100 steps (a sweep of
#: held-out loss on the bundled DART subset)
LR_AUTO = 0.0
METHOD_LR = {"state-offset-h": 5e-2, "state-offset-y": 5e-2, "initial-state": 2e-2, "prompt": 1e-1,
             "prefix": 3e-2, "lora-s6": 3e-2, "lora-inout": 3e-2, "bitfit": 3e-2, "sdt": 1e-2, "svf": 3e-2,
             "additional-scan": 1e-2, "full": 3e-3}


def table(rows: List[Dict[str, Any]]) -> str:
    metric_keys = [k for k in ("bleu", "rouge1", "rouge2", "rougeL", "accuracy", "f1", "matthews", "exact_match",
                               "execution_accuracy") if any(k in r for r in rows)]
    head = ["method", *metric_keys, "held-out loss", "trainable params", "time (s)"]
    lines = []
    for r in rows:
        lines.append([r["method"], *(f"{r[k]:.2f}" if k in r else "-" for k in metric_keys),
                      f"{r['eval_loss']:.3f}" if r.get("eval_loss") is not None else "-",
                      f"{r['trainable_params']:,}", f"{r['seconds']:.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def plot_losses(out: Path, rows: List[Dict[str, Any]], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssm_offset.train import read_log

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        recs = [x for x in read_log(r["log"]) if "loss" in x]
        ax.plot([x["step"] for x in recs], [x["loss"] for x in recs], label=r["method"])
        evals = [x for x in read_log(r["log"]) if "eval_loss" in x]
        if evals:
            ax.scatter([x["step"] for x in evals], [x["eval_loss"] for x in evals], marker="o", s=18)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("target-token loss (dots: held-out)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return str(path)


def run(args) -> int:
    from .train import load_run, parse_overrides

    if args.grid:
        from .grid import run_grid

        if args.config:
            raise ValueError("give either a run config or --grid, not both")
        overrides = parse_overrides(args.overrides)
        for flag, key in (("models", "grid.models"), ("tasks", "grid.tasks"), ("methods", "grid.methods")):
            if getattr(args, flag):
                overrides.append((key, getattr(args, flag)))
        summary = run_grid(args.grid, workers=args.workers, max_minutes=args.max_minutes, overrides=overrides,
                           retry_errors=args.retry_errors, dry_run=args.dry_run)
        print(json.dumps(summary))
        return 0
    config = load_run(args.config, args.overrides)
    methods = [m.strip() for m in (args.methods or DEFAULT_METHODS).split(",") if m.strip()]
    result = compare(config, methods)
    print("\n" + table(result["rows"]))
    print(f"\nloss curves: {result['plot']}")
    return 0


DEFAULT_METHODS = "state-offset-h,lora-s6,prompt"


def register(sub) -> None:
    p = sub.add_parser("compare", help="several methods on the same data and budget: table + loss-curve plot",
                       description=__doc__)
    p.add_argument("config", nargs="?", default="")
    p.add_argument("--methods", default="", help=f"comma-separated method names (default {DEFAULT_METHODS}; "
                                                 "with --grid: only these of the grid's)")
    g = p.add_argument_group("a grid of cells (model, task, method, lr, seed); see ssm_offset/cli/grid.py")
    g.add_argument("--grid", default="", help="a grid TOML file: run its pending cells, appending to its results")
    g.add_argument("--workers", type=int, default=1, help="worker processes, spread over the visible GPUs")
    g.add_argument("--max-minutes", type=float, default=0.0,
                   help="start no cell that would end after this many minutes (0: no limit)")
    g.add_argument("--models", default="", help="only these of the grid's models (comma-separated)")
    g.add_argument("--tasks", default="", help="only these of the grid's tasks (comma-separated)")
    g.add_argument("--retry-errors", action="store_true", help="run again the cells recorded with an error")
    g.add_argument("--dry-run", action="store_true", help="say how many cells are finished and ready, run none")
    p.set_defaults(func=run, accepts_overrides=True)
