"""Self-adaptation on real tasks (issue 7): SST-2, CoLA, RTE and DART experts on one small pretrained base.

Needs a base of at most 15M parameters pretrained by `ssm-offset pretrain` (GPT-NeoX tokenizer) — not run in
this session (no GPU time, no pretrained base yet). What it does, per seed (3 seeds):

1. one expert per task (default SVF, cross-entropy, `--steps` steps on the task's train split), stored in an
   expert store with its task tag and held-out metric;
2. classification expert: an adapter trained on (prompt(request) → task name) pairs from the train splits;
   routing accuracy on ≥ 200 held-out requests (validation splits, balanced) against chance 1/4;
3. prompt-based dispatch with the base model (expected near chance on a tiny base: it cannot follow the
   prompt; reported as measured);
4. leave-one-out few-shot: for each task T, CEM over the other three experts on 10 train examples of T;
   base, each single expert, the best single expert (oracle, chosen on the test set) and the CEM mixture are
   evaluated on ≥ 200 test examples of T.

Metric: exact match of the greedy answer (label words for the GLUE tasks) — computed as in few-shot scoring,
every label token the argmax; DART reports the label log-likelihood per token (exact match is ~0 for
free text), so "higher is better" everywhere.

    PYTHONPATH=python python benches/adapt_tasks.py --model runs/pretrain-15m --out benches/results/adapt-tasks

CPU scale (benches/results/adapt-tasks-cpu.md): a ~1M-parameter base with the bundled 2,048-token tokenizer,
`--tokenizer python/ssm_offset/data/bundled/tokenizer.json --threads 1`; seeds may run as separate processes
(`--seeds 0 --out runs/seed0`, ...) and be combined with `--merge runs/seed0.json,... --out OUT`.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ssm_offset.adapt import (
    FewShotSet, PopulationEvaluator, SelfAdaptiveModel, classifier_data, few_shot_adapt, load_experts, save_expert,
    train_expert,
)
from ssm_offset.data import Tokenizer
from ssm_offset.models import load_model
from ssm_offset.peft import config_for, get_peft_model

TASKS = ("sst2", "cola", "rte", "dart")
TEMPLATE = {"prompt": "{input}###", "target": "{output}", "eos": True}


def _tsv(path: Path, header: bool) -> List[List[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


def load_task(data: Path, task: str, split: str) -> List[Dict[str, str]]:
    """Records {"input", "output"} (DART has only its dev file: split it 80/20 for train/test)."""
    if task == "sst2":
        return [{"input": r[0].strip(), "output": ["negative", "positive"][int(r[1])]}
                for r in _tsv(data / "glue/SST-2" / f"{split}.tsv", True)]
    if task == "cola":
        return [{"input": r[3].strip(), "output": ["unacceptable", "acceptable"][int(r[1])]}
                for r in _tsv(data / "glue/CoLA" / f"{split}.tsv", False)]
    if task == "rte":
        return [{"input": f"{r[1]} {r[2]}", "output": r[3]} for r in _tsv(data / "glue/RTE" / f"{split}.tsv", True)]
    rows = json.load(open(data / "dart/dart-v1.1.1-full-dev.json"))
    recs = [{"input": " | ".join(" : ".join(t) for t in r["tripleset"]), "output": r["annotations"][0]["text"]}
            for r in rows if r["annotations"]]
    cut = int(0.8 * len(recs))
    return recs[:cut] if split == "train" else recs[cut:]


def sample(recs, n, seed):
    r = random.Random(seed)
    return r.sample(recs, min(n, len(recs)))


def scores(peft, experts, data, alpha_rows) -> Dict[str, np.ndarray]:
    return PopulationEvaluator(peft, experts, data).evaluate(np.asarray(alpha_rows))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="the pretrained base (required unless --merge)")
    p.add_argument("--merge", default="", help="comma-separated result JSONs of per-seed runs: only combine them "
                   "into --out.{json,md}")
    p.add_argument("--tokenizer", default="/work/shared/data/tokenizers/gpt-neox-20b/tokenizer.json")
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--method", default="svf")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benches/results/adapt-tasks")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge.split(","), args.out)
    if not args.model:
        p.error("--model is required")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tok = Tokenizer(args.tokenizer)
    data = Path(args.data)
    train = {t: load_task(data, t, "train") for t in TASKS}
    test = {t: load_task(data, t, "dev" if t != "dart" else "test") for t in TASKS}
    enc = lambda recs: FewShotSet.from_records(recs, tok, TEMPLATE, max_length=args.max_length)
    results = {"args": vars(args), "seeds": {}}
    for seed in map(int, args.seeds.split(",")):
        torch.manual_seed(seed)
        t0 = time.time()
        store = Path(args.out + f"-store-seed{seed}")
        base = load_model(args.model, device=args.device)
        peft = get_peft_model(base, config_for(args.method), adapter_name="router")
        for t in TASKS:  # 1. experts
            peft.add_adapter(t, config_for(args.method))
            train_expert(peft, t, enc(sample(train[t], 20000, seed)), steps=args.steps, lr=args.lr, seed=seed)
            held = enc(sample(test[t], args.test, seed + 100))
            one_hot = np.eye(1)
            acc = PopulationEvaluator(peft, [t], held).evaluate(one_hot)
            save_expert(store, peft, t, task=t, metrics={"accuracy": float(acc["accuracy"][0]),
                                                          "loglik": float(acc["loglik"][0])})
        # 2. classification expert (same method), trained on task names
        requests = {t: [r["input"] for r in sample(train[t], 500, seed)] for t in TASKS}
        train_expert(peft, "router", classifier_data(requests, tok.encode, eos_id=tok.eos_id),
                     steps=args.steps, lr=args.lr, seed=seed)
        held_req = {t: [r["input"] for r in sample(test[t], args.test // 4 + 1, seed + 7)] for t in TASKS}
        reqs = [r for t in TASKS for r in held_req[t]]
        gold = [t for t in TASKS for _ in held_req[t]]
        routed = {}
        for strategy in ("classifier", "prompt"):
            sam = SelfAdaptiveModel(peft, {t: t for t in TASKS}, strategy, classifier="router", encode=tok.encode)
            chosen = sam.choose(reqs)
            routed[strategy] = sum(c == g for c, g in zip(chosen, gold)) / len(gold)
        # 4. leave-one-out few-shot CEM
        loo = {}
        experts = load_experts(load_model(args.model, device=args.device), store)
        for t in TASKS:
            others = [o for o in TASKS if o != t]
            shots = enc(sample(train[t], args.shots, seed + 1))
            held = enc(sample(test[t], args.test, seed + 100))
            objective = "loss" if t == "dart" else "accuracy"
            res = few_shot_adapt(experts, others, shots, objective=objective, iterations=args.iterations, seed=seed)
            ev = PopulationEvaluator(experts, others, held, objective=objective)
            table = np.concatenate([res.alpha.reshape(1, -1), np.eye(3)])
            r = ev.evaluate(table)
            key = "loglik" if t == "dart" else "accuracy"
            loo[t] = {"base": float(ev.evaluate_base()[key][0]), "cem": float(r[key][0]),
                      **{f"expert_{o}": float(r[key][i + 1]) for i, o in enumerate(others)},
                      "best_single": float(max(r[key][1:])), "alpha": res.alpha.tolist(),
                      "cem_seconds": res.seconds}
        results["seeds"][seed] = {"routing": routed, "leave_one_out": loo, "seconds": time.time() - t0}
        print(json.dumps(results["seeds"][seed], indent=2))
    write_results(results, args.out)


def write_results(results, out: str) -> None:
    """`out`.json (all seeds) and `out`.md (means over seeds)."""
    Path(out + ".json").write_text(json.dumps(results, indent=2))
    lines = ["| held-out task | base | best single expert | CEM mixture | CEM > best single (seeds) | CEM > base (seeds) |",
             "|---|---|---|---|---|---|"]
    for t in TASKS:
        rows = [results["seeds"][s]["leave_one_out"][t] for s in results["seeds"]]
        mean = lambda k: np.mean([r[k] for r in rows])
        wins = sum(r["cem"] > r["best_single"] for r in rows)
        over_base = sum(r["cem"] > r["base"] for r in rows)
        lines.append(f"| {t} | {mean('base'):.3f} | {mean('best_single'):.3f} | {mean('cem'):.3f} | "
                     f"{wins}/{len(rows)} | {over_base}/{len(rows)} |")
    for strategy in ("classifier", "prompt"):
        accs = [results["seeds"][s]["routing"][strategy] for s in results["seeds"]]
        lines.append(f"\nrouting accuracy ({strategy}): {np.mean(accs):.3f} (per seed "
                     f"{', '.join(f'{a:.3f}' for a in accs)}; chance 0.25)")
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def merge(paths: List[str], out: str) -> None:
    """Combine the JSON results of per-seed runs (e.g. seeds run as parallel processes) into `out`.{json,md}."""
    merged = {"args": [], "seeds": {}}
    for path in paths:
        r = json.loads(Path(path).read_text())
        merged["args"].append(r["args"])
        merged["seeds"].update(r["seeds"])
    write_results(merged, out)

if __name__ == "__main__":
    main()
