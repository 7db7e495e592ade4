"""`ssm-offset compare --grid GRID.toml [--workers N] [--max-minutes M]`: a resumable comparison of methods over
cells (base model, task, method, learning rate, seed), on token arrays prepared ahead of time
(benches/quality/prepare.py writes them), spread over persistent worker processes and GPUs.

    [grid]
    bases = ".carry/bases"              # one Hugging Face-format model directory per name (model.sha256 inside)
    models = ["mamba", "mamba2"]
    data = ".carry/quality/data"        # manifest.json, tokenizer.json, <task>/{train,val,test}.safetensors + refs
    results = "benches/results/quality.jsonl"
    tasks = ["sst2", "cola", "rte", "dart"]
    methods = ["state-offset-h", "lora-s6", ...]
    seeds = [0, 1, 2]                   # the first seed sweeps the rates; the others run at the rate it chose
    val_limit = 200                     # validation examples scored (the rate is chosen on them)
    eval_batch_size = 128               # prompts per generation batch
    [grid.lr]       method = [rates]    # the sweep of each method
    [grid.options]  method = { ... }    # fields of the method's config (ssm_offset.peft.config_for)
    [grid.train]    method = { ... }    # TrainConfig fields for one method only (SDT's warm-up)
    [train]                             # TrainConfig of every cell: the same step budget for all methods
    [eval]                              # max_new_tokens, num_beams, limit (test examples scored; 0: all)

Order: every sweep cell (first seed, each rate) is queued first, grouped by (model, task, method); once a group's
sweep is complete — here or in an earlier call — the rate with the best validation metric (ties: the lower
validation loss) is chosen and the other seeds are queued at it. The parent appends one JSON line per finished cell
to `results` (one write, then fsync); a cell whose key (model, task, method, lr, seed, the base's sha256 and the
hash of its settings and data) is already there is skipped, so a killed run resumes where it stopped. A cell that
fails is recorded with its error (and skipped later, unless --retry-errors): SDT on a Mamba-2 base, say.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

RESULT_FIELDS = ("model", "task", "method", "lr", "seed")


class GridError(ValueError):
    """The grid file, the prepared data or a base model is not what the runner needs; the message names it."""


# -- the grid as data ---------------------------------------------------------------------------------------------

@dataclass
class GridSpec:
    bases: str = ".carry/bases"
    models: List[str] = field(default_factory=list)
    data: str = ".carry/quality/data"
    results: str = "benches/results/quality.jsonl"
    tasks: List[str] = field(default_factory=list)
    methods: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    val_limit: int = 200
    eval_batch_size: int = 128
    lr: Dict[str, List[float]] = field(default_factory=dict)
    # rates a sweep may add beyond each end of its list when the best rate sits at that end (0: none)
    extend_sweep: int = 0
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    train: Dict[str, Dict[str, Any]] = field(default_factory=dict)


@dataclass
class Grid:
    spec: GridSpec
    train: Any  # TrainConfig
    eval: Any   # EvalSpec
    source: str = "grid"

    def train_config(self, method: str):
        """The TrainConfig of a method's cells: [train] with the method's own [grid.train] fields on top."""
        return self.train.replace(**self.spec.train.get(method, {}))

    def settings_hash(self, task: str, method: str, data_sha: str) -> str:
        """What a cell's result depends on besides (model, lr, seed): its training and evaluation settings, the
        method's options and the task's data. A change to any of them makes the cell run again."""
        train = {k: v for k, v in self.train_config(method).to_dict().items() if k not in _RUN_ONLY}
        d = {"train": train, "eval": dataclasses.asdict(self.eval), "options": self.spec.options.get(method, {}),
             "val_limit": self.spec.val_limit, "data": data_sha, "task": task}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: TrainConfig fields that say where or how visibly a cell runs, not what it computes
_RUN_ONLY = ("output_dir", "progress", "tensorboard", "log_every", "resume", "device", "save_every",
             "keep_checkpoints", "lr", "seed")


def load_grid(path: str, overrides: Iterable[Tuple[str, str]] = ()) -> Grid:
    """A grid file with `--train.key VALUE` / `--eval.key VALUE` / `--grid.key VALUE` overrides applied."""
    from ssm_offset.peft import SHORT_NAMES
    from ssm_offset.train.config import TrainConfig, load_toml
    from ssm_offset.train.run import EvalSpec, _section, override

    raw = load_toml(path)
    unknown = sorted(set(raw) - {"grid", "train", "eval"})
    if unknown:
        raise GridError(f"{path}: unknown section(s) {unknown}; a grid has [grid], [train] and [eval]")
    for key, value in overrides:
        section = key.split(".", 1)[0]
        if section not in ("train", "eval", "grid"):
            raise GridError(f"--{key}: a grid takes overrides of [train], [eval] and [grid] only")
        if section == "grid":
            _override_grid(raw, key, value)
        else:
            override(raw, key, value)
    g = raw.get("grid", {})
    known = {f.name: f for f in dataclasses.fields(GridSpec)}
    bad = sorted(set(g) - set(known))
    if bad:
        raise GridError(f"{path} [grid]: unknown key(s) {bad}; known keys: {sorted(known)}")
    spec = GridSpec(**g)
    for name in ("models", "tasks", "methods", "seeds"):
        if not getattr(spec, name):
            raise GridError(f"{path} [grid]: {name} is empty")
    unknown_methods = [m for m in spec.methods if m not in SHORT_NAMES]
    if unknown_methods:
        raise GridError(f"{path} [grid] methods: unknown {unknown_methods}; known: {sorted(SHORT_NAMES)}")
    for table in ("lr", "options", "train"):
        extra = sorted(set(getattr(spec, table)) - set(SHORT_NAMES))
        if extra:
            raise GridError(f"{path} [grid.{table}]: unknown method(s) {extra}")
    for m in spec.methods:
        rates = spec.lr.get(m)
        if not rates or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            raise GridError(f"{path} [grid.lr]: {m} needs a list of positive learning rates, got {rates!r}")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise GridError(f"{path} [grid] seeds: {spec.seeds} repeats a seed")
    train = TrainConfig.from_dict(raw.get("train", {}), f"{path} [train]")
    for m, fields in spec.train.items():
        train.replace(**fields)  # checks the per-method fields now, not in a worker
    return Grid(spec, train, _section(EvalSpec, raw.get("eval", {}), f"{path} [eval]"), path)


def _override_grid(raw: Dict[str, Any], key: str, value: str) -> None:
    name = key.split(".", 1)[1]
    known = {f.name: f for f in dataclasses.fields(GridSpec)}
    if name not in known or name in ("lr", "options", "train"):
        raise GridError(f"--{key}: not a [grid] key that can be set from the command line")
    default = known[name].default_factory() if known[name].default is dataclasses.MISSING else known[name].default
    if isinstance(default, list):
        items = [v.strip() for v in value.split(",") if v.strip()]
        parsed: Any = [int(v) for v in items] if name == "seeds" else items
    elif isinstance(default, int):
        parsed = int(value)
    else:
        parsed = value
    raw.setdefault("grid", {})[name] = parsed


# -- results: one JSON line per finished cell ----------------------------------------------------------------------

def read_results(path) -> List[Dict[str, Any]]:
    """Every record of a results file ([] if there is none). A last line without its newline (a write cut short)
    is ignored; any other line that is not a JSON object is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    out = []
    for n, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GridError(f"{path}:{n}: not a JSON record ({exc.msg}); remove or repair the line") from None
        if not isinstance(rec, dict):
            raise GridError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    if tail.strip():
        print(f"{path}:{len(lines)}: ignoring an unfinished last line ({len(tail)} bytes)", file=sys.stderr)
    return out


def repair_results(path) -> None:
    """Cuts an unfinished last line (a write interrupted by a kill) so the next append starts a line of its own."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def append_result(path, record: Dict[str, Any]) -> None:
    """One record as one line, in one write to a file opened for appending, then fsync: a kill leaves at most an
    unfinished last line, which `read_results` ignores and `repair_results` cuts."""
    data = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def lr_text(lr: float) -> str:
    return f"{lr:.6g}"


def record_key(r: Dict[str, Any]) -> Tuple:
    return (r["model"], r["task"], r["method"], lr_text(r["lr"]), int(r["seed"]), r["base_sha256"], r["settings"])


def choose_lr(sweep: List[Dict[str, Any]]) -> Optional[float]:
    """The learning rate of the best finished sweep record: highest validation metric, then lowest validation
    loss (a tiny model often predicts one class at every rate, which ties the metric); None if none finished."""
    ok = [r for r in sweep if r.get("status") == "ok"]
    if not ok:
        return None
    best = max(ok, key=lambda r: (_finite(r["val"].get(r["metric"])), -_finite(r["val"].get("loss"), math.inf)))
    return float(best["lr"])


def _finite(x, bad=-math.inf) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else bad


# -- bases and data ------------------------------------------------------------------------------------------------

def base_dir(directory) -> Path:
    """A base's model directory: `<bases>/<name>/`, or its `final/` as `ssm-offset pretrain` writes it."""
    d = Path(directory)
    if not (d / "config.json").is_file() and (d / "final" / "config.json").is_file():
        d = d / "final"
    if not (d / "config.json").is_file():
        raise GridError(f"{d}: not a model directory (no config.json); put each base under [grid] bases/<name>/")
    return d


def base_sha256(directory) -> str:
    """The base checkpoint's sha256: `model.sha256` (written by `ssm-offset pretrain`), else computed over its
    weight files the same way (`checkpoint_sha256`)."""
    from ..models import checkpoint_sha256

    d = base_dir(directory)
    recorded = d / "model.sha256"
    if recorded.is_file():
        digest = recorded.read_text().split()[0] if recorded.read_text().split() else ""
        if len(digest) != 64:
            raise GridError(f"{recorded}: expected a 64-digit sha256 first, got {digest!r}")
        return digest
    try:
        return checkpoint_sha256(d)
    except Exception as exc:  # noqa: BLE001 — any unreadable checkpoint: say which base
        raise GridError(f"{d}: no model.sha256 and no weights to hash ({exc})") from exc


def load_manifest(data_dir) -> Dict[str, Any]:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise GridError(f"{path}: no such file; prepare the data first (benches/quality/prepare.py)")
    return json.loads(path.read_text())


@dataclass
class Split:
    examples: Any            # ssm_offset.data.Examples with prompt_lengths
    references: List[Any]    # label strings, or lists of reference texts (DART)


def load_split(data_dir, task: str, split: str, need_references: bool = True) -> Split:
    from ssm_offset.data import Examples

    base = Path(data_dir) / task
    examples = Examples.load(base / f"{split}.safetensors")
    refs: List[Any] = []
    if need_references:
        ref_path = base / f"{split}.refs.json"
        if not ref_path.is_file():
            raise GridError(f"{ref_path}: no such file (the references the {task} metric scores against)")
        refs = json.loads(ref_path.read_text())
        if len(refs) != len(examples):
            raise GridError(f"{ref_path}: {len(refs)} references for {len(examples)} examples in {split}.safetensors")
    if examples.prompt_lengths is None:
        raise GridError(f"{base / split}.safetensors: no prompt_lengths tensor (generation needs the prompts)")
    return Split(examples, refs)


# -- the plan: which cells, in which order ------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    model: str
    task: str
    method: str
    lr: float
    seed: int
    phase: str  # "sweep" or "seed"

    def label(self) -> str:
        return f"{self.model}/{self.task}/{self.method} lr={lr_text(self.lr)} seed={self.seed}"


class Plan:
    """Pending cells in dependency order, given the records already finished."""

    def __init__(self, grid: Grid, base_shas: Dict[str, str], data_shas: Dict[str, str],
                 records: List[Dict[str, Any]], retry_errors: bool = False):
        self.grid, self.base_shas, self.data_shas = grid, base_shas, data_shas
        self.done: Dict[Tuple, Dict[str, Any]] = {}
        for r in records:
            if r.get("kind") == "cell" and (r.get("status") == "ok" or not retry_errors):
                self.done[record_key(r)] = r
        s = grid.spec
        self.groups = [(m, t, meth) for m in s.models for t in s.tasks for meth in s.methods]
        self.queue: List[Cell] = [Cell(m, t, meth, float(lr), s.seeds[0], "sweep")
                                  for (m, t, meth) in self.groups for lr in s.lr[meth]
                                  if self.key(Cell(m, t, meth, float(lr), s.seeds[0], "sweep")) not in self.done]
        self.queued = {self.key(c) for c in self.queue}
        self.chosen: Dict[Tuple[str, str, str], Optional[float]] = {}
        for g in self.groups:
            self.after(g)

    def settings(self, task: str, method: str) -> str:
        return self.grid.settings_hash(task, method, self.data_shas[task])

    def key(self, c: Cell) -> Tuple:
        return (c.model, c.task, c.method, lr_text(c.lr), c.seed, self.base_shas[c.model], self.settings(c.task, c.method))

    def record(self, cell: Cell, record: Dict[str, Any]) -> None:
        self.done[self.key(cell)] = record
        self.after((cell.model, cell.task, cell.method))

    def _enqueue(self, c: Cell) -> None:
        k = self.key(c)
        if k not in self.done and k not in self.queued:
            self.queued.add(k)
            self.queue.append(c)

    def after(self, group: Tuple[str, str, str]) -> None:
        """Once a group's sweep is complete: choose its rate and queue the other seeds at it. With
        `extend_sweep` = k, a best rate at an end of the listed rates first gets up to k more rates beyond that
        end (the same ratio as the two outermost listed ones), one at a time, until the best is inside the
        range or k rates were added: an edge rate would otherwise be a guess at where the optimum lies."""
        if group in self.chosen:
            return
        m, t, meth = group
        s = self.grid.spec
        rates = sorted(float(lr) for lr in s.lr[meth])
        up = rates[-1] / rates[-2] if len(rates) > 1 else 1.0
        down = rates[1] / rates[0] if len(rates) > 1 else 1.0
        added = {"top": 0, "bottom": 0}
        while True:
            cells = [Cell(m, t, meth, lr, s.seeds[0], "sweep") for lr in rates]
            sweep = [self.done.get(self.key(c)) for c in cells]
            if any(r is None for r in sweep):
                for c, r in zip(cells, sweep):
                    if r is None:
                        self._enqueue(c)
                return
            lr = choose_lr(sweep)  # type: ignore[arg-type]
            if lr is None or len(rates) < 2:
                break
            if lr == rates[-1] and added["top"] < s.extend_sweep:
                added["top"] += 1
                rates.append(float(lr_text(rates[-1] * up)))
            elif lr == rates[0] and added["bottom"] < s.extend_sweep:
                added["bottom"] += 1
                rates.insert(0, float(lr_text(rates[0] / down)))
            else:
                break
        self.chosen[group] = lr
        if lr is None:
            return  # every rate failed: nothing to repeat
        for seed in s.seeds[1:]:
            self._enqueue(Cell(m, t, meth, lr, seed, "seed"))

    def pop(self) -> Optional[Cell]:
        return self.queue.pop(0) if self.queue else None


# -- one cell ------------------------------------------------------------------------------------------------------

class WorkerState:
    """What a worker loads once: the data of every task (token arrays, references) and each base model on its
    device; a cell then copies the base, adds its adapter, trains and scores."""

    def __init__(self, grid: Grid, bases: Dict[str, str]):
        import torch

        from ssm_offset.data import TASK_METRICS, Tokenizer

        self.grid = grid
        self.bases = bases
        # a worker sees one GPU (CUDA_VISIBLE_DEVICES set by the parent): "cuda" is that one
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if grid.train.device == "auto" else grid.train.device)
        if self.device.type == "cuda":
            from ssm_offset.ops.ssd import kernel as ssd_kernel

            # every worker would otherwise compile and time each of mamba_ssm's SSD autotuning configs itself:
            # minutes of a short GPU call, for a kernel choice that changes speed only, never a result
            ssd_kernel.limit_autotuning(2)
        data = Path(grid.spec.data)
        self.manifest = load_manifest(data)
        self.tokenizer = Tokenizer(str(data / "tokenizer.json"))
        self.metrics = {t: self.manifest["tasks"][t].get("metric") or TASK_METRICS[t] for t in grid.spec.tasks}
        self.data = {t: {"train": load_split(data, t, "train", need_references=False),
                         "val": load_split(data, t, "val"), "test": load_split(data, t, "test")}
                     for t in grid.spec.tasks}
        self._bases: Dict[str, Any] = {}

    def base(self, name: str):
        if name not in self._bases:
            from ssm_offset.models import load_model

            self._bases[name] = load_model(self.bases[name], device=self.device)  # fp32 master weights
        return self._bases[name]


def run_cell(state: WorkerState, cell: Cell, settings: str, base_sha: str) -> Dict[str, Any]:
    import torch

    from ssm_offset.peft import config_for, get_peft_model
    from ssm_offset.train import Trainer
    from ssm_offset.train.trainer import seed_everything

    from .methods import count_trainable

    start = time.perf_counter()
    grid = state.grid
    base = state.base(cell.model)
    cfg = config_for(cell.method)
    options = grid.spec.options.get(cell.method, {})
    if options:
        cfg = type(cfg).from_dict({**cfg.to_dict(), **options}, f"{grid.source} [grid.options] {cell.method}")
    seed_everything(cell.seed)  # adapter initialisation (LoRA A, virtual tokens) follows the cell's seed
    model = get_peft_model(copy.deepcopy(base), cfg)
    scratch = tempfile.mkdtemp(prefix="ssm-offset-cell-")
    try:
        train_cfg = grid.train_config(cell.method).replace(
            lr=cell.lr, seed=cell.seed, output_dir=scratch, progress=False, tensorboard=False, save_every=0,
            resume=False, device=str(state.device))
        data = state.data[cell.task]
        trainer = Trainer(model, train_cfg, data["train"].examples, pad_id=state.tokenizer.pad_id)
        result = trainer.train()
        # a rate that diverges is a result of the sweep (it scores what NaN weights generate), not an error
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
        eval_start = time.perf_counter()
        metric = state.metrics[cell.task]
        val = score_split(state, model, train_cfg, data["val"], metric, grid.spec.val_limit)
        test = score_split(state, model, train_cfg, data["test"], metric, grid.eval.limit)
        trainable = count_trainable(model)
        total = sum(p.numel() for p in base.parameters())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "kind": "cell", "status": "ok", **_cell_fields(cell, settings, base_sha), "metric": metric,
        "val": {k: v for k, v in val.items() if k != "samples"}, "test": {k: v for k, v in test.items() if k != "samples"},
        "samples": test["samples"], "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100.0 * trainable / total, "steps": result["step"], "final_loss": result["loss"],
        "finite": finite,
        "train_seconds": result["seconds"], "eval_seconds": time.perf_counter() - eval_start,
        "wall_seconds": time.perf_counter() - start, "device": _device_name(state.device),
        "config": {"train": {k: v for k, v in train_cfg.to_dict().items() if k != "output_dir"},
                   "eval": dataclasses.asdict(grid.eval), "options": options},
    }


def score_split(state: WorkerState, model, train_cfg, split: Split, metric: str, limit: int) -> Dict[str, Any]:
    """Target-token loss (teacher forcing) and the task metric of greedy generations from the prompt ids."""
    from ssm_offset.data import decode
    from ssm_offset.eval import generate_ids, score
    from ssm_offset.train import Trainer

    ex = split.examples
    n = min(len(ex), limit) if limit else len(ex)
    subset = _Head(ex, n)
    loss = Trainer(model, train_cfg, subset, subset, pad_id=state.tokenizer.pad_id).evaluate()["eval_loss"]
    # no more new tokens than the longest target needs (a label and eos: two), at most [eval] max_new_tokens
    longest = int((ex.lengths[:n] - ex.prompt_lengths[:n]).max())
    rows = generate_ids(model, [ex.prompt(i) for i in range(n)], min(state.grid.eval.max_new_tokens, max(1, longest)),
                        state.grid.eval.num_beams, state.grid.spec.eval_batch_size, state.tokenizer.eos_id,
                        state.tokenizer.pad_id)
    predictions = [decode(state.tokenizer, r).strip() for r in rows]
    scores = score(metric, predictions, split.references[:n])
    return {"loss": loss, "n": n, **scores, "samples": predictions[:3]}


class _Head:
    """The first n examples of a dataset, as a sequence."""

    def __init__(self, data, n: int):
        self.data, self.n = data, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.data[i]


def _cell_fields(cell: Cell, settings: str, base_sha: str) -> Dict[str, Any]:
    return {"model": cell.model, "task": cell.task, "method": cell.method, "lr": cell.lr, "seed": cell.seed,
            "phase": cell.phase, "base_sha256": base_sha, "settings": settings}


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')})"
    return "cpu"


# -- workers -------------------------------------------------------------------------------------------------------

def _worker(index: int, grid_path: str, overrides, bases: Dict[str, str], threads: int, inbox, outbox) -> None:
    """A worker process: load once, then run cells from `inbox` until None, answering on `outbox`."""
    import torch

    torch.set_num_threads(threads)
    try:
        state = WorkerState(load_grid(grid_path, overrides), bases)
    except Exception:  # the parent reports it and stops: every cell would fail the same way
        outbox.put(("dead", index, None, traceback.format_exc()))
        return
    outbox.put(("ready", index, None, None))
    while True:
        job = inbox.get()
        if job is None:
            return
        cell, settings, base_sha = job
        outbox.put(("start", index, cell, None))
        try:
            outbox.put(("done", index, cell, run_cell(state, cell, settings, base_sha)))
        except Exception as exc:
            outbox.put(("done", index, cell, {
                "kind": "cell", "status": "error", **_cell_fields(cell, settings, base_sha),
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:],
                "device": _device_name(state.device)}))


def visible_gpus() -> List[str]:
    """The GPUs workers are spread over: CUDA_VISIBLE_DEVICES's entries if set, else 0..count-1; [] on CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [x.strip() for x in listed.split(",") if x.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


class _Pool:
    """`n` spawned workers, worker i pinned to GPU i mod (number of GPUs) through CUDA_VISIBLE_DEVICES."""

    def __init__(self, n: int, grid_path: str, overrides, bases: Dict[str, str], log):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")  # CUDA cannot be forked; each worker starts clean
        self.inbox, self.outbox = self.ctx.Queue(), self.ctx.Queue()
        self.args = (grid_path, list(overrides), bases)
        self.gpus = visible_gpus()
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // max(1, n))
        self.procs: Dict[int, Any] = {}
        self.log = log
        for i in range(n):
            self.spawn(i)

    def spawn(self, i: int) -> None:
        env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[i % len(self.gpus)]
        try:
            p = self.ctx.Process(target=_worker, args=(i, *self.args, self.threads, self.inbox, self.outbox),
                                 daemon=True, name=f"grid-worker-{i}")
            p.start()
        finally:
            if env_before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = env_before
        self.procs[i] = p

    def dead(self) -> List[int]:
        return [i for i, p in self.procs.items() if not p.is_alive()]

    def close(self, timeout: float = 30.0) -> None:
        for _ in self.procs:
            self.inbox.put(None)
        end = time.monotonic() + timeout
        for p in self.procs.values():
            p.join(max(0.1, end - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(5)


def _reap(pool: _Pool, busy: Dict[int, Cell], sent: List[Cell], summary: Dict[str, int], workers: int, log) -> None:
    """After a quiet spell: respawn dead workers; a cell sent but held by no live worker while the inbox is empty
    was taken by one that died, and stays pending for a later call."""
    for i in pool.dead():
        cell = busy.pop(i, None)
        log(f"worker {i} died" + (f" running {cell.label()}" if cell else "") + "; starting a new one")
        summary["lost"] += 1
        if summary["lost"] > workers:
            raise GridError("workers keep dying (out of memory?); stopping")
        pool.spawn(i)
    try:
        waiting = pool.inbox.qsize()
    except NotImplementedError:  # macOS: no qsize; a dead worker's cell then waits for the deadline
        return
    if waiting == 0:
        for cell in [c for c in sent if c not in busy.values()]:
            sent.remove(cell)


# -- the run -------------------------------------------------------------------------------------------------------

def run_grid(grid_path: str, workers: int = 1, max_minutes: float = 0.0, overrides=(), retry_errors: bool = False,
             dry_run: bool = False, log=print) -> Dict[str, Any]:
    """Runs the grid's pending cells; returns counts. Stops feeding new cells when a cell would not finish
    before `max_minutes` (cell time estimated from this call's finished cells), then waits for those running."""
    import queue as queue_mod

    started = time.time()
    grid = load_grid(grid_path, overrides)
    s = grid.spec
    manifest = load_manifest(s.data)
    missing = [t for t in s.tasks if t not in manifest.get("tasks", {})]
    if missing:
        raise GridError(f"{Path(s.data) / 'manifest.json'}: no prepared data for task(s) {missing}")
    data_shas = {t: manifest["tasks"][t]["sha256"] for t in s.tasks}
    bases = {m: str(base_dir(Path(s.bases) / m)) for m in s.models}
    base_shas = {m: base_sha256(d) for m, d in bases.items()}
    repair_results(s.results)
    plan = Plan(grid, base_shas, data_shas, read_results(s.results), retry_errors)
    total_cells = sum(len(s.lr[g[2]]) + len(s.seeds) - 1 for g in plan.groups)
    log(f"grid {grid_path}: {len(plan.groups)} (model, task, method) groups, {len(plan.done)} cells finished, "
        f"{len(plan.queue)} ready now (about {total_cells} in all)")
    summary = {"finished": 0, "errors": 0, "lost": 0, "pending": len(plan.queue)}
    if dry_run or not plan.queue:
        return summary
    workers = max(1, workers)
    deadline = started + max_minutes * 60 if max_minutes > 0 else math.inf
    pool = _Pool(workers, grid_path, overrides, bases, log)
    busy: Dict[int, Cell] = {}     # worker -> the cell it runs
    sent: List[Cell] = []          # cells put in the inbox and not yet finished
    durations: List[float] = []
    feeding = True

    def feed() -> None:
        nonlocal feeding
        while len(sent) < workers and plan.queue:
            estimate = statistics.median(durations) if durations else 0.0
            if time.time() + estimate > deadline:
                if feeding:
                    log(f"--max-minutes {max_minutes}: no new cells ({len(plan.queue)} left for the next call)")
                feeding = False
                return
            cell = plan.pop()
            sent.append(cell)
            pool.inbox.put((cell, plan.settings(cell.task, cell.method), base_shas[cell.model]))

    try:
        feed()
        while sent:
            try:
                kind, index, cell, payload = pool.outbox.get(timeout=10)
            except queue_mod.Empty:
                _reap(pool, busy, sent, summary, workers, log)
                feed()
                continue
            if kind == "dead":
                raise GridError(f"worker {index} could not start:\n{payload}")
            if kind == "ready":
                continue
            if kind == "start":
                busy[index] = cell
                continue
            busy.pop(index, None)
            if cell in sent:
                sent.remove(cell)
            append_result(s.results, payload)
            plan.record(cell, payload)
            summary["finished"] += 1
            if payload["status"] == "ok":
                durations.append(payload["wall_seconds"])
                log(f"[{summary['finished']}] {cell.label()}: val {payload['metric']} "
                    f"{payload['val'][payload['metric']]:.2f}, test {payload['test'][payload['metric']]:.2f} "
                    f"({payload['wall_seconds']:.1f} s, worker {index})")
            else:
                summary["errors"] += 1
                log(f"[{summary['finished']}] {cell.label()}: error {payload['error'][:200]}")
            feed()
    finally:
        pool.close()
    summary["pending"] = len(plan.queue)
    call = {"kind": "call", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_seconds": time.time() - started, "workers": workers, "gpus": pool.gpus,
            "models": s.models, "command": sys.argv, **summary}
    append_result(s.results, call)
    log(f"done: {summary['finished']} cells ({summary['errors']} errors, {summary['lost']} lost) in "
        f"{call['wall_seconds']:.0f} s; {summary['pending']} ready cells left")
    return summary


__all__ = ["GridSpec", "Grid", "GridError", "Cell", "Plan", "load_grid", "run_grid", "read_results", "append_result",
           "repair_results", "choose_lr", "record_key", "base_sha256", "load_split", "lr_text"]
