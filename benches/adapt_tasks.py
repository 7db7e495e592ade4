"""Self-adaptation on real tasks (issue 7): SST-2, CoLA, RTE and DART experts on one small pretrained base.

Per seed (one process per seed; `--merge` combines them), run in the order 1, 4, 2, 3:

1. experts: one adapter per task (`--method`, default State-offset h; cross-entropy, `--steps` × `--batch-size`
   on the task's train split, in the task's reference format from `ssm_offset.data.tasks`: an instruction,
   `###`, the label as a digit and eos for GLUE; `###` then the text for DART), stored in an expert store with
   its held-out metric;
2. classification expert ("classifier" strategy): an adapter trained on (classification prompt(request) →
   category) pairs from the train splits; routing accuracy on `--route-test` held-out requests (dev splits,
   balanced) against chance 1/4;
3. prompt-based dispatch's mechanism ("prompt" strategy): a tiny base cannot follow the classification prompt, so
   an adapter (the "dispatcher") is fine-tuned to answer it; the store holds three experts and the fourth task
   (`--others-task`) is what the dispatcher must call "others" (→ base weights). Pass one generates the answer,
   parses it, and pass two runs the chosen expert — checked to be exactly the base model for "others";
4. leave-one-out few-shot: for each task T, CEM over the other three experts on `--shots` train examples of T;
   base, each single expert, the best single expert (by the shots, and the oracle by the test set) and the CEM
   mixture on `--test` test examples of T (the same sample the expert's own metric used).

Requests (stages 2–3) are the tasks' inputs without their instruction (the sentence, the sentence pair, the
linearised triples): with the instruction the request would name its own task. Category names are one GPT-NeoX
token each (" sentiment", " grammar", " inference", " description", " others"), so the classifier's per-token
score is the category's whole log-likelihood — no length bias either way (results record the token counts).

Metrics, higher is better everywhere. GLUE: accuracy = greedy decoding reproduces the label digit and then eos
(every label token is the argmax), the library's GLUE accuracy (`ssm_offset.eval`: generate to eos, compare
the stripped text); the majority class rate of the same test sample is reported beside it. DART: label
log-likelihood per token (the CEM objective "loss"; BLEU needs generation and is not the CEM fitness).

Data: `--data-root` holds the shared layout (glue/{SST-2,CoLA,RTE}/{train,dev}.tsv, dart/dart-v1.1.1-full-dev.json,
tokenizers/gpt-neox-20b/tokenizer.json). The GPU machine has no ../shared: `--prepare .carry/adapt-data` copies
exactly those files (~10 MB) into a git-ignored folder that travels with `carry`; tokenization happens there
with the Rust pipeline (from the wheel). GPU run: benches/gpu/adapt_tasks.sh.

    python benches/adapt_tasks.py --prepare .carry/adapt-data                      # here, once
    python benches/adapt_tasks.py --model .carry/bases/mamba2 --data-root .carry/adapt-data --seeds 0 --out R/seed0
    python benches/adapt_tasks.py --merge R/seed0.json,R/seed1.json,R/seed2.json --out benches/results/adapt-tasks-X
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ssm_offset.adapt import (
    FewShotSet, PopulationEvaluator, SelfAdaptiveModel, classifier_data, few_shot_adapt, load_experts, save_expert,
    train_expert,
)
from ssm_offset.adapt.self_adaptive import OTHERS
from ssm_offset.data import Tokenizer, load_task, template
from ssm_offset.data.files import decode
from ssm_offset.models import load_model
from ssm_offset.peft import config_for, get_peft_model

TASKS = ("sst2", "cola", "rte", "dart")
GLUE = ("sst2", "cola", "rte")
CATEGORY = {"sst2": "sentiment", "cola": "grammar", "rte": "inference", "dart": "description"}
TOKENIZER = "tokenizers/gpt-neox-20b/tokenizer.json"
#: what the GPU machine needs, relative to the data root (the shared layout `ssm_offset.data.load_task` reads)
NEEDED = [f"glue/{d}/{s}.tsv" for d in ("SST-2", "CoLA", "RTE") for s in ("train", "dev")] + [
    "dart/dart-v1.1.1-full-dev.json", TOKENIZER]


def prepare(data_root: Path, dest: Path) -> None:
    """Copy exactly the files the run reads into `dest` (same layout)."""
    total = 0
    for rel in NEEDED:
        src = data_root / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src}: missing (expected the shared data layout under {data_root})")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        total += src.stat().st_size
    print(f"copied {len(NEEDED)} files, {total / 2**20:.1f} MiB, into {dest}")


def request_text(task: str, rec: Dict[str, Any]) -> str:
    """The request a user would send: the task's input without its instruction."""
    if task == "rte":
        return f"{rec['sentence1']}\n{rec['sentence2']}"
    return rec["triples"] if task == "dart" else rec["sentence"]


def sample(recs: List[Any], n: int, seed: int) -> List[Any]:
    return random.Random(seed).sample(recs, min(n, len(recs)))


class Run:
    """One seed's stages; `self.result` grows stage by stage and is written after each one, so a run cut off by
    its time limit still leaves what it finished."""

    def __init__(self, args: argparse.Namespace, seed: int, tok: Tokenizer, train: Dict[str, list],
                 test: Dict[str, list]):
        self.args, self.seed, self.tok, self.train, self.test = args, seed, tok, train, test
        self.tasks = args.tasks
        self.result: Dict[str, Any] = {"stages_done": [], "seconds": {}}
        self.store = Path(args.store or args.out + "-store") / f"seed{seed}"
        self.test_recs = {t: sample(test[t], args.test, seed + 100) for t in self.tasks}

    def encode(self, task: str, recs: List[Dict[str, Any]]) -> FewShotSet:
        return FewShotSet.from_records(recs, self.tok, template(task), max_length=self.args.max_length)

    def fit(self, peft, adapter: str, data: FewShotSet, steps: int) -> List[float]:
        a = self.args
        stats = train_expert(peft, adapter, data, steps=steps, lr=a.lr, batch_size=a.batch_size, seed=self.seed,
                             precision=a.precision, log_every=max(1, steps // 10))
        return [round(x, 4) for x in stats.losses]

    def stage(self, name: str, t0: float, save) -> None:
        self.result["seconds"][name] = round(time.time() - t0, 1)
        self.result["stages_done"].append(name)
        print(f"[seed {self.seed}] {name}: {self.result['seconds'][name]} s", flush=True)
        save()

    # 1 ------------------------------------------------------------------------------------------------------
    def experts(self, peft) -> None:
        a, out = self.args, {}
        for t in self.tasks:
            data = self.encode(t, sample(self.train[t], a.steps * a.batch_size, self.seed))
            losses = self.fit(peft, t, data, a.steps)
            held = self.encode(t, self.test_recs[t])
            objective = "loss" if t == "dart" else "accuracy"
            r = PopulationEvaluator(peft, [t], held, objective=objective).evaluate(np.ones((1, 1)))
            metrics = {"accuracy": float(r["accuracy"][0]), "loglik": float(r["loglik"][0])}
            save_expert(self.store, peft, t, task=t, metrics=metrics)
            out[t] = {**metrics, "train_examples": len(data), "losses": losses}
        self.result["experts"] = out

    # 2 ------------------------------------------------------------------------------------------------------
    def requests(self, recs: Dict[str, list], n: int, seed: int) -> Dict[str, List[str]]:
        return {t: [request_text(t, r) for r in sample(recs[t], n, seed)] for t in self.tasks}

    def route(self, sam: SelfAdaptiveModel, held: Dict[str, List[str]], gold_of: Dict[str, Optional[str]]):
        reqs = [r for t in self.tasks for r in held[t]]
        gold = [gold_of[t] for t in self.tasks for _ in held[t]]
        chosen = sam.choose(reqs)
        per_task = {t: float(np.mean([c == gold_of[t] for c, g in zip(chosen, gold) if g == gold_of[t]]))
                    for t in self.tasks}
        confusion = {t: {str(c): sum(1 for c2, g in zip(chosen, gold) if g == gold_of[t] and c2 == c)
                         for c in [*dict.fromkeys(gold_of.values()), None]} for t in self.tasks}
        return reqs, chosen, {"accuracy": sum(c == g for c, g in zip(chosen, gold)) / len(gold),
                              "requests": len(gold), "per_task": per_task, "confusion": confusion}

    def classifier(self, peft) -> None:
        a = self.args
        cats = {CATEGORY[t]: t for t in self.tasks}
        train_req = self.requests(self.train, a.router_examples // len(self.tasks), self.seed + 3)
        data = classifier_data({CATEGORY[t]: train_req[t] for t in self.tasks}, self.tok.encode,
                               eos_id=self.tok.eos_id)
        losses = self.fit(peft, "router", data, a.router_steps)
        held = self.requests(self.test, a.route_test // len(self.tasks), self.seed + 7)
        sam = SelfAdaptiveModel(peft, cats, "classifier", classifier="router", encode=self.tok.encode,
                                classify_rows=a.classify_rows)
        _, _, r = self.route(sam, held, {t: CATEGORY[t] for t in self.tasks})
        r.update(chance=1 / len(self.tasks), losses=losses,
                 category_tokens={c: len(self.tok.encode(" " + c)) for c in [*cats, OTHERS]})
        self.result["routing_classifier"] = r

    # 3 ------------------------------------------------------------------------------------------------------
    def dispatcher(self, peft) -> None:
        a = self.args
        stored = [t for t in self.tasks if t != a.others_task]
        cats = {CATEGORY[t]: t for t in stored}
        train_req = self.requests(self.train, a.router_examples // len(self.tasks), self.seed + 5)
        data = classifier_data({(CATEGORY[t] if t in stored else OTHERS): train_req[t] for t in self.tasks},
                               self.tok.encode, eos_id=self.tok.eos_id)
        losses = self.fit(peft, "dispatcher", data, a.router_steps)
        held = self.requests(self.test, a.route_test // len(self.tasks), self.seed + 7)
        sam = SelfAdaptiveModel(peft, cats, "prompt", dispatcher="dispatcher", encode=self.tok.encode,
                                dispatch_tokens=4)
        reqs, chosen, r = self.route(sam, held, {t: CATEGORY.get(t) if t in stored else None for t in self.tasks})
        # pass two on a few requests of each choice: "others" must be answered by the base weights exactly
        picked = [i for c in dict.fromkeys(chosen) for i in [j for j, x in enumerate(chosen) if x == c][:4]]
        sub = [reqs[i] for i in picked]
        answers, choices = sam.generate(sub, 4, return_choices=True, eos_token_id=[])
        base_rows = [i for i, c in enumerate(choices) if c is None]
        with peft.disable_adapter():
            ref = peft.generate([self.tok.encode(sub[i]) for i in base_rows], 4, eos_token_id=[]).tolist()
        peft.set_adapter("dispatcher")
        raw = peft.generate([sam.dispatch_prompt(reqs[i]) for i in picked[:8]], 4, eos_token_id=[]).tolist()
        r.update(chance=1 / len(self.tasks), losses=losses, others_task=a.others_task, categories=list(cats),
                 pass_two_checked=len(sub), others_answered_by_base=len(base_rows),
                 others_equal_base=[answers[i] for i in base_rows] == ref,
                 answer_examples=[{"gold": next(t for t in self.tasks if reqs[i] in held[t]),
                                   "answer": decode(self.tok, raw[k]), "chosen": chosen[i]}
                                  for k, i in enumerate(picked[:8])])
        self.result["routing_prompt"] = r

    # 4 ------------------------------------------------------------------------------------------------------
    def leave_one_out(self, peft=None) -> None:
        """On a fresh base with the experts loaded from the store (the store round trip is part of the test)."""
        a = self.args
        experts = load_experts(load_model(a.model, device=a.device), self.store)
        loo = {}
        for t in self.tasks:
            others = [o for o in self.tasks if o != t]
            objective, key = ("loss", "loglik") if t == "dart" else ("accuracy", "accuracy")
            shots = self.encode(t, sample(self.train[t], a.shots, self.seed + 1))
            res = few_shot_adapt(experts, others, shots, objective=objective, granularity=a.granularity,
                                 population=a.population, iterations=a.iterations, seed=self.seed)
            ev = PopulationEvaluator(experts, others, self.encode(t, self.test_recs[t]), a.granularity, objective)
            r = ev.evaluate(np.concatenate([res.alpha.reshape(1, -1)] + [ev.one_hot(i) for i in range(len(others))]))
            single = {o: float(r[key][i + 1]) for i, o in enumerate(others)}
            by_shots = max(others, key=lambda o: res.experts_alone[o]["fitness"])
            row = {"base": float(ev.evaluate_base()[key][0]), "cem": float(r[key][0]),
                   **{f"expert_{o}": v for o, v in single.items()},
                   "best_single": max(single.values()), "best_single_expert": max(single, key=single.get),
                   "shots_pick": by_shots, "shots_pick_score": single[by_shots],
                   "own_expert": self.result.get("experts", {}).get(t, {}).get(key),
                   "alpha": res.alpha.tolist(), "cem_fitness_history": [round(h, 4) for h in res.history],
                   "cem_seconds": round(res.seconds, 2), "test_examples": len(self.test_recs[t])}
            if t in GLUE:
                labels = [rec["label"] for rec in self.test_recs[t]]
                row["majority"] = max(labels.count(v) for v in set(labels)) / len(labels)
            loo[t] = row
        self.result["leave_one_out"] = loo

    def run(self, save) -> Dict[str, Any]:
        torch.manual_seed(self.seed)
        a = self.args
        t0 = time.time()
        base = load_model(a.model, device=a.device)
        self.result["base_parameters"] = sum(p.numel() for p in base.parameters())
        peft = get_peft_model(base, config_for(a.method), adapter_name=self.tasks[0])
        for name in [*self.tasks[1:], "router", "dispatcher"]:
            peft.add_adapter(name, config_for(a.method))
        self.experts(peft)
        self.stage("experts", t0, save)
        # leave-one-out first: under the GPU run's time limit the main table is the last thing to lose
        for name, fn in (("loo", self.leave_one_out), ("classifier", self.classifier), ("prompt", self.dispatcher)):
            if name in a.stages:
                t0 = time.time()
                fn(peft)
                self.stage(name, t0, save)
        return self.result


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="the pretrained base, HF layout (required unless --merge / --prepare)")
    p.add_argument("--prepare", default="", help="only copy the files the run needs from --data-root into this folder")
    p.add_argument("--merge", default="", help="comma-separated per-seed result JSONs: only combine them into --out")
    p.add_argument("--command", default="", help="--merge: the command line to record in the report")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--tokenizer", default="", help=f"default: the model's tokenizer.json, else DATA_ROOT/{TOKENIZER}")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--stages", default="loo,classifier,prompt", help="after the experts: any of classifier "
                   "(routing by the classification expert), prompt (prompt dispatch), loo (leave-one-out CEM)")
    # State-offset (h) by default: on the 1M CPU base (bundled tokenizer, 100 steps × 16, lr 2e-3) its experts
    # learned the GLUE format (test accuracy SST-2 0.47, CoLA 0.76, RTE 0.56) where SVF's stayed at 0.00
    # (label log-likelihood/token −7.0 to −7.6, barely off the base); both mix linearly (h' = Σ α_k h'_k)
    p.add_argument("--method", default="state-offset-h", help="the experts' (and router's) adapter method")
    p.add_argument("--granularity", default="expert", help="CEM: one α per expert, or per 'layer' / 'matrix'")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per expert")
    p.add_argument("--router-steps", type=int, default=300, help="optimiser steps for the router and dispatcher")
    p.add_argument("--router-examples", type=int, default=2000, help="(request → category) training pairs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    # fp32 (TF32 matmuls on a GPU): a ≤15M model is launch-bound, where autocast only adds cast kernels
    p.add_argument("--precision", default="fp32", help="training: fp32, bf16 (autocast), auto (bf16 on a GPU)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test", type=int, default=200, help="test examples per task (leave-one-out)")
    p.add_argument("--route-test", type=int, default=200, help="held-out routing requests per seed (balanced)")
    p.add_argument("--others-task", default="dart", help="prompt dispatch: the task left out of the store")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--max-length", type=int, default=256)
    # full-vocabulary logits of 32 rows × ~300 tokens × 50k (GPT-NeoX) are ~2 GB in fp32, times ~2 for the
    # log-softmax: bounded so that three seed processes share one GPU
    p.add_argument("--classify-rows", type=int, default=32, help="(request, category) rows per classifier forward")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benches/results/adapt-tasks")
    p.add_argument("--store", default="", help="expert stores (default: OUT-store)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    args.tasks = args.tasks.split(",")
    args.stages = args.stages.split(",") if args.stages else []
    if set(args.stages) - {"classifier", "prompt", "loo"}:
        p.error(f"--stages: got {args.stages}, expected some of classifier, prompt, loo")
    unknown = set(args.tasks) - set(TASKS)
    if unknown or len(args.tasks) < 2:
        p.error(f"--tasks: need at least two of {list(TASKS)}, got {args.tasks}")
    if not (args.merge or args.prepare or args.model):
        p.error("--model is required")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.prepare:
        return prepare(Path(args.data_root), Path(args.prepare))
    if args.merge:
        return merge(args.merge.split(","), args.out, args.command)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # training, evaluation and CEM: fp32 with TF32 matmuls
    root = Path(args.data_root)
    tok_path = args.tokenizer or next((str(p) for p in (Path(args.model) / "tokenizer.json", root / TOKENIZER)
                                       if p.is_file()), str(root / TOKENIZER))
    tok = Tokenizer(tok_path)
    t0 = time.time()
    train = {t: load_task(t, str(root), "train") for t in args.tasks}
    test = {t: load_task(t, str(root), "test") for t in args.tasks}
    results = {"args": {**vars(args), "tokenizer": tok_path}, "argv": sys.argv, "seeds": {},
               "environment": environment(args.device), "data_seconds": round(time.time() - t0, 1)}
    save = lambda: write_results(results, args.out)
    for seed in map(int, args.seeds.split(",")):
        t0 = time.time()
        run = Run(args, seed, tok, train, test)
        results["seeds"][seed] = run.result
        run.run(save)
        run.result["seconds"]["total"] = round(time.time() - t0, 1)
        save()


def environment(device: str) -> Dict[str, str]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _fmt(values: List[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "–"


def report(results: Dict[str, Any], command: str = "") -> str:
    """The markdown report: leave-one-out table (means over seeds), routing, settings, timings."""
    seeds = results["seeds"]
    args = results["args"][0] if isinstance(results["args"], list) else results["args"]
    tasks = args["tasks"]
    lines = ["## Leave-one-out few-shot adaptation (CEM over the other experts)", "",
             f"Means over {len(seeds)} seed(s); GLUE: accuracy (greedy label digit + eos; majority = the test "
             "sample's majority-class rate), DART: label log-likelihood per token. 'best single (shots)' is the "
             "expert the few-shot examples pick, 'best single (oracle)' the best on the test set.", "",
             "| held-out task | test ex./seed | majority | base | own expert (not in the mixture) | "
             "best single (shots) | best single (oracle) | CEM | CEM > oracle single (seeds) | "
             "CEM ≥ shots pick (seeds) | CEM > base (seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        rows = [s["leave_one_out"][t] for s in seeds.values() if "leave_one_out" in s]
        if not rows:
            continue
        col = lambda k: [r[k] for r in rows if r.get(k) is not None]
        n = len(rows)
        lines.append(
            f"| {t} | {rows[0]['test_examples']} | {_fmt(col('majority'))} | {_fmt(col('base'))} | "
            f"{_fmt(col('own_expert'))} | {_fmt(col('shots_pick_score'))} | {_fmt(col('best_single'))} | "
            f"{_fmt(col('cem'))} | {sum(r['cem'] > r['best_single'] for r in rows)}/{n} | "
            f"{sum(r['cem'] >= r['shots_pick_score'] for r in rows)}/{n} | "
            f"{sum(r['cem'] > r['base'] for r in rows)}/{n} |")
    pairs = [s["leave_one_out"][t] for s in seeds.values() if "leave_one_out" in s for t in tasks
             if t in s["leave_one_out"]]
    if pairs:
        lines += ["", f"Over all {len(pairs)} (held-out task, seed) pairs, CEM scores above the best single expert "
                  f"(oracle) in {sum(r['cem'] > r['best_single'] for r in pairs)}, ties it in "
                  f"{sum(r['cem'] == r['best_single'] for r in pairs)}, and scores above the expert the shots pick in "
                  f"{sum(r['cem'] > r['shots_pick_score'] for r in pairs)}."]
    lines += ["", "CEM mixtures α (per seed, experts in task order without the held-out one):", ""]
    for t in tasks:
        al = [np.round(np.asarray(s["leave_one_out"][t]["alpha"]), 2).tolist() for s in seeds.values()
              if "leave_one_out" in s]
        if al:
            lines.append(f"- {t}: " + "; ".join(str(x) for x in al))
    lines += ["", "## Routing", ""]
    for key, what in (("routing_classifier", "classification expert (constrained scoring of the 4 categories + "
                       "'others')"), ("routing_prompt", "prompt-based dispatch, dispatcher adapter fine-tuned to "
                                      "answer the prompt; the left-out task's requests should be 'others'")):
        rs = [s[key] for s in seeds.values() if key in s]
        if not rs:
            continue
        accs = [r["accuracy"] for r in rs]
        per_task = {t: _fmt([r["per_task"][t] for r in rs]) for t in tasks}
        lines.append(f"- **{what}**: accuracy {np.mean(accs):.3f} over {sum(r['requests'] for r in rs)} held-out "
                     f"requests (per seed {', '.join(f'{a:.3f}' for a in accs)}; chance {rs[0]['chance']:.2f}); per "
                     f"task {per_task}")
        if key == "routing_prompt":
            n_base = sum(r["others_answered_by_base"] for r in rs)
            lines.append(f"  - 'others' → base weights: pass-two answers of {n_base} requests routed to 'others' "
                         f"equal the base model's own: {all(r['others_equal_base'] for r in rs)}")
    lines += ["", "## Experts on their own task (test sample)", "",
              "| task | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for t in tasks:
        vals = [s.get("experts", {}).get(t) for s in seeds.values()]
        lines.append(f"| {t} | " + " | ".join("–" if v is None else
                                              f"{v['loglik' if t == 'dart' else 'accuracy']:.3f}" for v in vals) + " |")
    lines += ["", "## Settings and timings", ""]
    keys = ("model", "method", "granularity", "steps", "router_steps", "router_examples", "batch_size", "lr",
            "precision", "test", "route_test", "shots", "population", "iterations", "max_length", "device")
    lines.append("- " + ", ".join(f"{k}={args[k]}" for k in keys))
    env = results.get("environment") or {}
    if isinstance(results.get("environments"), list):
        env = results["environments"][0]
    lines.append(f"- environment: {env}")
    for s, r in seeds.items():
        lines.append(f"- seed {s}: base {r.get('base_parameters', 0):,} parameters; seconds {r['seconds']}; "
                     f"stages done {r['stages_done']}")
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def write_results(results: Dict[str, Any], out: str, command: str = "") -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps(results, indent=2, default=str))
    Path(out + ".md").write_text(report(results, command))


def merge(paths: List[str], out: str, command: str = "") -> None:
    """Combine per-seed runs (e.g. seeds run as parallel processes) into `out`.{json,md}; a missing file (a run
    that never started) is named and skipped."""
    merged: Dict[str, Any] = {"args": [], "environments": [], "seeds": {}}
    for path in paths:
        if not Path(path).is_file():
            print(f"merge: {path} missing, skipped")
            continue
        r = json.loads(Path(path).read_text())
        merged["args"].append(r["args"])
        merged["environments"].append(r.get("environment"))
        merged["seeds"].update(r["seeds"])
    if not merged["seeds"]:
        raise SystemExit(f"merge: no results in {paths}")
    write_results(merged, out, command)
    print(Path(out + ".md").read_text())


if __name__ == "__main__":
    main()
