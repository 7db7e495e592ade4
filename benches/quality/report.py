"""The quality benchmark's report, from its JSONL results: one table per base model (method, trainable
parameters, test metric per task as mean ± sample standard deviation over seeds at the chosen learning rate, the
chosen rate, fine-tuning time), a PNG plot, the commands and the grid file, the GPU time, and computed facts for
the paragraph on the paper's claims (written by hand in the section left for it).

    PYTHONPATH=python python benches/quality/report.py [--grid benches/quality/grid.toml] [--out benches/results/quality.md]

Only the latest settings count: for each (model, task, method) the records that share the base sha256 and
settings hash of its most recent record (an older base or budget is superseded, not averaged in).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = {"sst2": "SST-2 acc", "cola": "CoLA MCC", "rte": "RTE acc", "dart": "DART BLEU", "samsum": "SAMSum R-L",
              "spider": "Spider EX"}
CLAIMS_PLACEHOLDER = "_(to be written: which of the paper's claims hold here and which do not, from the facts above)_"


def current(records: List[Dict[str, Any]]) -> Dict[Tuple[str, str, str], List[Dict[str, Any]]]:
    """Cell records per (model, task, method), keeping those of the group's latest base and settings."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "cell":
            groups.setdefault((r["model"], r["task"], r["method"]), []).append(r)
    out = {}
    for g, rs in groups.items():
        latest = (rs[-1]["base_sha256"], rs[-1]["settings"])
        keep: Dict[Tuple, Dict[str, Any]] = {}
        for r in rs:
            if (r["base_sha256"], r["settings"]) == latest:
                keep[(float(r["lr"]), int(r["seed"]))] = r  # a rerun of a cell supersedes the earlier one
        out[g] = list(keep.values())
    return out


def summarize(rs: List[Dict[str, Any]], sweep_seed: int, sweep_lrs: List[float]) -> Dict[str, Any]:
    """The chosen rate and the test metric over seeds at it (or the error that stopped the group)."""
    from ssm_offset.cli.grid import choose_lr

    sweep = [r for r in rs if int(r["seed"]) == sweep_seed]
    lr = choose_lr(sweep)
    if lr is None:
        errors = [r.get("error", "") for r in rs if r.get("status") == "error"]
        return {"error": errors[0] if errors else "no finished sweep cell"}
    at = [r for r in rs if r.get("status") == "ok" and abs(float(r["lr"]) - lr) <= 1e-12 * lr]
    values = [float(r["test"][r["metric"]]) for r in at]
    done_lrs = sorted({float(r["lr"]) for r in sweep})
    return {"lr": lr, "values": values, "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "edge": len(done_lrs) > 1 and lr in (done_lrs[0], done_lrs[-1]),
            "sweep_complete": all(any(abs(x - float(l)) <= 1e-12 * x for x in done_lrs) for l in sweep_lrs),
            "trainable": at[0]["trainable_params"], "percent": at[0]["trainable_percent"],
            "train_seconds": statistics.mean(float(r["train_seconds"]) for r in at),
            "diverged": sum(not r.get("finite", True) for r in sweep)}


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:,}"


def model_table(model: str, tasks: List[str], methods: List[str], table: Dict[Tuple[str, str], Dict[str, Any]],
                seeds: int) -> List[str]:
    head = ["method", "trainable", "%", *[TASK_NAMES.get(t, t) for t in tasks], "fine-tuning s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for m in methods:
        cells, info = [], None
        for t in tasks:
            s = table.get((t, m))
            if s is None:
                cells.append("not run")
            elif "error" in s:
                cells.append("n/a")
            else:
                info = info or s
                mark = ("†" if s["edge"] else "") + (f" (n={len(s['values'])})" if len(s["values"]) != seeds else "")
                cells.append(f"{s['mean']:.1f} ± {s['std']:.1f} @{s['lr']:.0e}{mark}")
        if info is None:
            lines.append(f"| {m} | – | – | " + " | ".join(cells) + " | – |")
            continue
        secs = statistics.mean(s["train_seconds"] for t in tasks if (s := table.get((t, m))) and "error" not in s)
        lines.append(f"| {m} | {fmt_count(info['trainable'])} | {info['percent']:.3f} | " + " | ".join(cells)
                     + f" | {secs:.1f} |")
    return lines


def facts(model: str, tasks: List[str], methods: List[str], table: Dict[Tuple[str, str], Dict[str, Any]]) -> List[str]:
    """Statements the claims paragraph can rest on, computed from the table (means over seeds, test split)."""
    out = []
    ok = lambda t, m: table.get((t, m)) is not None and "error" not in table[(t, m)]  # noqa: E731
    ranks: Dict[str, List[int]] = {}
    for t in tasks:
        ranked = sorted((m for m in methods if ok(t, m)), key=lambda m: -table[(t, m)]["mean"])
        for i, m in enumerate(ranked, 1):
            ranks.setdefault(m, []).append(i)
    n = len([m for m in methods if m in ranks])
    order = sorted(ranks, key=lambda m: statistics.mean(ranks[m]))
    out.append(f"- mean rank over {len(tasks)} tasks (1 = best of {n}): "
               + ", ".join(f"{m} {statistics.mean(ranks[m]):.1f}" for m in order))
    for so in ("state-offset-h", "state-offset-y"):
        if so not in ranks:
            continue
        for other in ("prompt", "prefix", "initial-state", "lora-s6", "lora-inout", "full"):
            both = [t for t in tasks if ok(t, so) and ok(t, other)]
            if not both:
                continue
            wins = [t for t in both if table[(t, so)]["mean"] > table[(t, other)]["mean"]]
            diffs = ", ".join(f"{t} {table[(t, so)]['mean'] - table[(t, other)]['mean']:+.1f}" for t in both)
            params = table[(both[0], so)]["trainable"] / max(1, table[(both[0], other)]["trainable"])
            extra = f"; {params:.2g}× its trainable parameters" if other.startswith("lora") else ""
            if other == "full":
                rel = ", ".join(f"{t} {100 * table[(t, so)]['mean'] / table[(t, other)]['mean']:.0f}%"
                                for t in both if table[(t, other)]["mean"] > 0)
                extra = f"; share of full fine-tuning's score: {rel or 'n/a'}"
            out.append(f"- {so} vs {other}: better on {len(wins)} of {len(both)} tasks ({diffs}){extra}")
    return out


def plot(path: Path, models: List[str], tasks: List[str], methods: List[str],
         tables: Dict[str, Dict[Tuple[str, str], Dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(models), len(tasks), figsize=(3.2 * len(tasks), 3.4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            ms = [m for m in methods if "mean" in tables[model].get((task, m), {})]
            ax.barh(range(len(ms)), [tables[model][(task, m)]["mean"] for m in ms],
                    xerr=[tables[model][(task, m)]["std"] for m in ms], color=[
                        "tab:red" if m.startswith("state-offset") else "tab:gray" if m == "full" else "tab:blue"
                        for m in ms])
            ax.set_yticks(range(len(ms)), ms, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{model}: {TASK_NAMES.get(task, task)}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def report(grid_path: str, out: str, results: Optional[str] = None) -> str:
    from ssm_offset.cli.grid import load_grid, read_results, record_key

    grid = load_grid(grid_path)
    s = grid.spec
    records = read_results(results or s.results)
    groups = current(records)
    models = [m for m in s.models if any(g[0] == m for g in groups)]
    tables = {m: {(t, meth): summarize(groups[(m, t, meth)], s.seeds[0], s.lr[meth])
                  for t in s.tasks for meth in s.methods if (m, t, meth) in groups} for m in models}
    kept = [r for rs in groups.values() for r in rs]
    calls = [r for r in records if r.get("kind") == "call"]
    out_path = Path(out)
    png = out_path.with_suffix(".png")
    lines = [
        "# Quality benchmark: State-offset Tuning and the baselines at small scale (issue 9)", "",
        f"Generated by `python benches/quality/report.py` from `{results or s.results}` ({len(kept)} cell records "
        f"counted, {len(records)} lines). Every table cell traces to JSONL records with the same (model, task, "
        "method, lr, seed).", "",
        f"Each cell: test-split metric, mean ± sample std over {len(s.seeds)} seeds ({', '.join(map(str, s.seeds))}) "
        f"at the learning rate (`@`) chosen on seed {s.seeds[0]} by the validation metric (validation split carved "
        f"from the training data, ≤ {s.val_limit} examples; ties by validation loss). Budget for every method: "
        f"{grid.train.max_steps} steps × batch {grid.train.batch_size}, {grid.train.schedule} schedule. "
        "† = the chosen rate is at the edge of the sweep; n/a = the method does not apply to this base (see Errors).",
        ""]
    for m in models:
        shas = sorted({r["base_sha256"] for r in kept if r["model"] == m})
        devices = sorted({r.get("device", "?").split(" (")[0] for r in kept if r["model"] == m})
        total = next((r["total_params"] for r in kept if r["model"] == m and "total_params" in r), 0)
        lines += [f"## {m}", "",
                  f"Base `{s.bases}/{m}`: {fmt_count(total)} parameters, sha256 {', '.join(x[:16] for x in shas)}; "
                  f"run on {', '.join(devices)}.", ""]
        lines += model_table(m, s.tasks, s.methods, tables[m], len(s.seeds)) + [""]
        lines += ["Facts for the claims paragraph:", ""] + facts(m, s.tasks, s.methods, tables[m]) + [""]
    if models:
        plot(png, models, s.tasks, s.methods, tables)
        lines += [f"![test metric per task and method]({png.name})", ""]
    cell_s = sum(float(r.get("wall_seconds", 0.0)) for r in kept)
    call_s = sum(float(c["wall_seconds"]) for c in calls)
    gpu_s = sum(float(c["wall_seconds"]) * max(1, len(c.get("gpus") or [])) for c in calls if c.get("gpus"))
    lines += ["## GPU time", "",
              f"{len(calls)} runner calls, {call_s / 60:.1f} min of wall clock, {gpu_s / 3600:.2f} GPU-hours held "
              f"(wall clock × GPUs); the cells counted above took {cell_s / 3600:.2f} worker-hours (several workers "
              "share a GPU).", "",
              "## Commands", "", "```bash",
              "PYTHONPATH=python python benches/quality/prepare.py        # CPU machine: token arrays in .carry/quality/data",
              "bash benches/gpu/quality.sh mamba,mamba2                   # GPU machine, repeated until no cell is left",
              "PYTHONPATH=python python benches/quality/report.py         # this file", "```", "",
              f"Grid file (`{grid_path}`):", "", "```toml", Path(grid_path).read_text().rstrip(), "```", ""]
    # a cell rerun after an error (--retry-errors) counts by its finished record; only errors never made good
    # are listed, with how many were retried successfully
    done = {record_key(r) for r in kept if r.get("status") == "ok"}
    retried = {record_key(r) for r in records if r.get("kind") == "cell" and r.get("status") == "error"} & done
    standing = [r for r in kept if r.get("status") == "error"]

    def superseded(r):  # a later seed at a rate the finished sweep did not choose: the error no longer matters
        g = tables.get(r["model"], {}).get((r["task"], r["method"]), {})
        return (int(r["seed"]) != int(s.seeds[0]) and "values" in g and len(g["values"]) == len(s.seeds)
                and abs(float(r["lr"]) - g["lr"]) > 1e-12 * g["lr"])

    moot = [r for r in standing if superseded(r)]
    standing = [r for r in standing if not superseded(r)]
    errors = sorted({(r["model"], r["method"], r.get("error", "").split("\n")[0][:160]) for r in standing})
    if retried or standing or moot:
        lines += ["## Errors", "", f"{len(retried)} cell(s) failed once and finished when rerun (`--retry-errors`); "
                  f"{len(moot)} failed at a rate the finished sweep did not choose (superseded, not rerun); "
                  f"{len(standing)} still stand as errors (not rerun yet, or the method does not apply):", ""]
        lines += [f"- {m} / {meth}: {e}" for m, meth, e in errors] + [""]
    previous = out_path.read_text() if out_path.exists() else ""
    claims = previous.split("## Which of the paper's claims hold", 1)[1].strip() if "## Which of the paper's claims hold" \
        in previous else CLAIMS_PLACEHOLDER
    lines += ["## Which of the paper's claims hold", "", claims, ""]
    text = "\n".join(lines)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out_path)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=str(ROOT / "benches" / "quality" / "grid.toml"))
    p.add_argument("--results", default=None, help="the JSONL file (default: the grid's results)")
    p.add_argument("--out", default=str(ROOT / "benches" / "results" / "quality.md"))
    a = p.parse_args(argv)
    report(a.grid, a.out, a.results)
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
