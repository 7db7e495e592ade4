"""A fine-tuning run described as plain data — model, method, data, training, evaluation — and the one function
that carries it out. `ssm-offset train`, `compare` and `demo` all go through `fine_tune`.

    [model]   path = "runs/base/final"             # a Hugging Face-format model directory
    [method]  name = "state-offset-h"              # a short name (ssm_offset.peft.SHORT_NAMES)
              options = { r = 4 }                  # fields of that method's config
    [data]    tokenizer = "tokenizer.json"
              train = "train.jsonl"                # .jsonl / .json / .csv / .parquet; or task = "dart" + root
              eval = "test.jsonl"
              template = "dart"                    # a task name, or a table {prompt, target, eos}
              max_length = 256  truncation = "drop"  pack = false
    [train]   lr = 1e-3  max_steps = 200 ...       # TrainConfig
    [eval]    metric = "bleu"  max_new_tokens = 48  num_beams = 1  limit = 100

Everything is checked (files, fields, templates, keys) before the output directory is created.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .config import TrainConfig, TrainConfigError


@dataclass
class ModelSpec:
    path: str = ""


@dataclass
class MethodSpec:
    name: str = "state-offset-h"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    tokenizer: str = ""
    train: str = ""
    eval: str = ""
    task: str = ""            # instead of files: a task of the shared data layout (ssm_offset.data.tasks)
    root: str = ""
    template: Union[str, Dict[str, Any]] = ""
    max_length: int = 512
    truncation: str = "truncate"
    pack: bool = False
    train_limit: int = 0      # use only the first N training records (0: all)


@dataclass
class EvalSpec:
    metric: str = ""          # "" : the task's metric (ssm_offset.data.TASK_METRICS), else none
    max_new_tokens: int = 64
    num_beams: int = 1
    limit: int = 100          # held-out records scored by generation (0: all)


SECTIONS = {"model": ModelSpec, "method": MethodSpec, "data": DataSpec, "train": TrainConfig, "eval": EvalSpec}


@dataclass
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSpec = field(default_factory=EvalSpec)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "config") -> "RunConfig":
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise TrainConfigError(f"{source}: unknown section(s) {unknown}; known sections: {sorted(SECTIONS)}")
        parts = {}
        for name, klass in SECTIONS.items():
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise TrainConfigError(f"{source}: [{name}] must be a table")
            if klass is TrainConfig:
                parts[name] = TrainConfig.from_dict(values, f"{source} [train]")
            else:
                parts[name] = _section(klass, values, f"{source} [{name}]")
        return cls(**parts)

    def to_dict(self) -> Dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _section(klass, values: Dict[str, Any], source: str):
    known = {f.name: f for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TrainConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    for k, v in values.items():
        default = known[k].default if known[k].default is not dataclasses.MISSING else known[k].default_factory()
        ok = isinstance(v, type(default)) or (isinstance(default, str) and isinstance(v, dict) and k == "template")
        if isinstance(default, int) and isinstance(v, bool) and not isinstance(default, bool):
            ok = False
        if not ok:
            raise TrainConfigError(f"{source}: {k} = {v!r}, expected a {type(default).__name__}")
    return klass(**values)


def override(d: Dict[str, Any], dotted: str, raw: str) -> None:
    """Set `section.key` in a config dict from a command-line string, parsed by the field's type."""
    if "." not in dotted:
        raise TrainConfigError(f"--{dotted}: expected --section.key (sections: {sorted(SECTIONS)})")
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:
        raise TrainConfigError(f"--{dotted}: unknown section {section!r}; known sections: {sorted(SECTIONS)}")
    known = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if key not in known:
        raise TrainConfigError(f"--{dotted}: unknown key {key!r} in [{section}]; known keys: {sorted(known)}")
    f = known[key]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise TrainConfigError(f"--{dotted}: got {raw!r}, expected true or false")
        value: Any = raw.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        value = int(raw)
    elif isinstance(default, float):
        value = float(raw)
    elif isinstance(default, dict) or (key == "template" and raw.lstrip().startswith("{")):
        value = json.loads(raw)
    else:
        value = raw
    d.setdefault(section, {})[key] = value


# -- carrying a run out -----------------------------------------------------------------------------------------

def load_data(spec: DataSpec, tokenizer, log=print):
    """(train examples, eval records, template) from files or a task; the counts of dropped and truncated
    records are reported through `log`."""
    from ..data import TASK_METRICS, encode, load_records, load_task, pack
    from ..data.files import describe
    from ..data.tasks import template as task_template

    if spec.task:
        if not spec.root:
            raise TrainConfigError("[data] task needs root (the directory holding the shared data layout)")
        train_records = load_task(spec.task, spec.root, "train")
        eval_records = load_task(spec.task, spec.root, "test")
    else:
        if not spec.train:
            raise TrainConfigError("[data] needs train (a data file) or task")
        train_records = load_records(spec.train)
        eval_records = load_records(spec.eval) if spec.eval else None
    tpl = spec.template or spec.task
    if not tpl:
        raise TrainConfigError("[data] needs template (a task name or a {prompt, target, eos} table)")
    if isinstance(tpl, str):
        tpl = task_template(tpl)
    if spec.train_limit:
        train_records = train_records[: spec.train_limit]
    examples, stats = encode(tokenizer, train_records, tpl, spec.max_length, spec.truncation,
                             source=spec.train or f"{spec.task} train")
    log(f"train data: {describe(stats, spec.max_length)}")
    if spec.pack:
        examples = pack(examples, spec.max_length)
        log(f"packed into {len(examples)} rows of at most {spec.max_length} tokens")
    eval_examples = None
    if eval_records is not None:
        eval_examples, estats = encode(tokenizer, eval_records, tpl, spec.max_length, spec.truncation,
                                       source=spec.eval or f"{spec.task} test")
        log(f"eval data: {describe(estats, spec.max_length)}")
    metric = TASK_METRICS.get(spec.task or (spec.template if isinstance(spec.template, str) else ""), "")
    return examples, eval_examples, eval_records, tpl, metric


def build_model(model_spec: ModelSpec, method: MethodSpec):
    from ..models import load_model
    from ..peft import config_for, get_peft_model

    if not model_spec.path:
        raise TrainConfigError("[model] needs path (a Hugging Face-format model directory)")
    base = load_model(model_spec.path)
    if method.name == "none":
        return base
    cfg = config_for(method.name)
    if method.options:
        cfg = type(cfg).from_dict({**cfg.to_dict(), **method.options}, f"[method] options of {method.name}")
    return get_peft_model(base, cfg)


def fine_tune(run: RunConfig, log=print, model=None) -> Dict[str, Any]:
    """Train, then score held-out records by generation; writes output_dir/{final, log.jsonl, results.json}.

    Inputs are all read and checked first; a run that fails before training leaves no output directory."""
    from ..data import Tokenizer
    from ..eval import evaluate_generation
    from .trainer import Trainer

    out = Path(run.train.output_dir)
    fresh = not out.exists()
    if not run.data.tokenizer:
        raise TrainConfigError("[data] needs tokenizer (a tokenizer.json)")
    tokenizer = Tokenizer(run.data.tokenizer)
    examples, eval_examples, eval_records, tpl, task_metric = load_data(run.data, tokenizer, log)
    model = model if model is not None else build_model(run.model, run.method)
    metric = run.eval.metric or task_metric
    try:
        trainer = Trainer(model, run.train, examples, eval_examples, pad_id=tokenizer.pad_id)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
        scores: Dict[str, float] = {}
        if metric and eval_records:
            limit = run.eval.limit or len(eval_records)
            scores, predictions = evaluate_generation(model, tokenizer, eval_records[:limit], tpl, metric,
                                                      run.eval.max_new_tokens, run.eval.num_beams)
            (out / "predictions.jsonl").write_text("".join(json.dumps({"prediction": p}) + "\n" for p in predictions))
        trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
        summary = {"method": run.method.name, "trainable_params": trainable, "seconds": seconds,
                   "final_loss": result["loss"], "eval_loss": trainer.evaluate()["eval_loss"] if eval_examples else None,
                   **scores, "log": result["log"], "output": str(out / "final")}
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps({"summary": summary, "config": run.to_dict()}, indent=2, default=str) + "\n")
        tmp.replace(out / "results.json")
        return summary
    except BaseException:
        if fresh and not any(out.glob("checkpoint-*")):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: no half-written output directory
        raise


__all__ = ["RunConfig", "ModelSpec", "MethodSpec", "DataSpec", "EvalSpec", "SECTIONS", "override", "fine_tune",
           "load_data", "build_model"]


# -- pretraining from scratch -------------------------------------------------------------------------------------

def read_token_stream(path: str):
    """A pre-tokenized corpus: a 1-D integer .npy (documents each followed by eos, as `tokenizer.pack` joins
    them), memory-mapped, and the metadata of the .json beside it (`vocab_size`, `eos_id`), {} when absent.
    Read with allow_pickle=False: a .npy of objects is refused, never unpickled."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such token file ([data] tokens)")
    try:
        ids = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise TrainConfigError(f"{p}: not a plain .npy array of token ids ({e})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise TrainConfigError(f"{p}: expected a 1-D integer array of token ids, got shape {ids.shape} {ids.dtype}")
    meta_path = p.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return ids, meta


def check_token_ids(ids, vocab_size: int, source: str) -> None:
    """Every id must index the embedding: an id out of range would fail deep inside the first forward."""
    import numpy as np

    if len(ids) and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
        where = int(np.argmax((ids >= vocab_size) | (ids < 0)))
        raise TrainConfigError(f"{source}: token id {int(ids[where])} at position {where} is outside the model's "
                               f"vocabulary (vocab_size {vocab_size}); was it made with another tokenizer?")


def token_blocks(ids, block_size: int, source: str):
    """A token stream cut into consecutive blocks, the partial last one dropped: what `lm_blocks` does to text."""
    import numpy as np

    from ..data.batching import Blocks

    n = len(ids) // block_size
    return Blocks(np.asarray(ids[: n * block_size], dtype=np.int64).reshape(n, block_size), source)


def write_curve(log_path: Path, target: Path) -> List[Dict[str, Any]]:
    """The learning curve from log.jsonl, one row per evaluation: the step, the mean training loss over the steps
    since the previous evaluation, the held-out loss and perplexity, the learning rate. Written as CSV."""
    import math

    from .trainer import read_log

    rows, pending = [], []
    for record in read_log(log_path):
        if "loss" in record:
            pending.append(record)
        if "eval_loss" in record:
            train = [r["loss"] for r in pending]
            rows.append({"step": record["step"], "train_loss": sum(train) / len(train) if train else float("nan"),
                         "eval_loss": record["eval_loss"], "eval_perplexity": math.exp(min(record["eval_loss"], 50)),
                         "lr": pending[-1]["lr"] if pending else float("nan")})
            pending = []
    lines = ["step,train_loss,eval_loss,eval_perplexity,lr"]
    lines += [f"{r['step']},{r['train_loss']:.6f},{r['eval_loss']:.6f},{r['eval_perplexity']:.4f},{r['lr']:.6g}" for r in rows]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)
    return rows


def pretrain(architecture: Dict[str, Any], corpus: List[str], tokenizer_path: str, block_size: int,
             train: TrainConfig, log=print, eval_fraction: float = 0.02, tokens: str = "") -> Dict[str, Any]:
    """A model from scratch: `architecture` is a config dict (`model_type` "mamba" or "mamba2" plus its fields).

    The text is either `corpus` (files or directories of .txt, tokenized with `tokenizer_path`) or `tokens`, a
    pre-tokenized 1-D .npy stream (vocab_size, eos and pad from the architecture, else the tokenizer if given,
    else the .json beside the .npy). It is cut into fixed blocks (eos between documents); a seeded
    `eval_fraction` of the blocks is held out. Deterministic for a given seed on CPU. Writes output_dir/final
    (Hugging Face format; with train.load_best_model_at_end the best evaluation's weights), its sha256
    (final/model.sha256, `checkpoint_sha256`), output_dir/curve.csv and output_dir/pretrain.json."""
    import math

    import torch

    from ..data import Tokenizer, lm_blocks, read_texts
    from ..data.batching import Blocks
    from ..models import checkpoint_sha256, config_from_hf_dict, load_model, model_from_config
    from ..models.io import checkpoint_files
    from .trainer import Trainer, seed_everything

    if not 0.0 <= eval_fraction < 1.0:
        raise TrainConfigError(f"[data] eval_fraction: got {eval_fraction!r}, expected 0 <= eval_fraction < 1")
    if bool(tokens) == bool(corpus):
        raise TrainConfigError("[data] needs either corpus (text files, with tokenizer) or tokens (a .npy of ids)")
    tokenizer = Tokenizer(tokenizer_path) if tokenizer_path else None
    arch = dict(architecture)
    if tokens:
        ids, meta = read_token_stream(tokens)
        vocab = arch.get("vocab_size") or (tokenizer.vocab_size if tokenizer else meta.get("vocab_size"))
        if not vocab:
            raise TrainConfigError(f"[model] vocab_size: needed for {tokens} (no tokenizer, and no vocab_size in "
                                   f"{Path(tokens).with_suffix('.json')})")
        check_token_ids(ids, int(vocab), tokens)
        eos = tokenizer.eos_id if tokenizer else meta.get("eos_id")
        pad = tokenizer.pad_id if tokenizer else eos
        arch.setdefault("vocab_size", int(vocab))
    else:
        if tokenizer is None:
            raise TrainConfigError("[data] corpus needs tokenizer (a tokenizer.json)")
        eos, pad = tokenizer.eos_id, tokenizer.pad_id
        arch.setdefault("vocab_size", tokenizer.vocab_size)
    for key, value in (("eos_token_id", eos), ("pad_token_id", pad), ("bos_token_id", eos)):
        if value is not None:
            arch.setdefault(key, value)
    config = config_from_hf_dict(arch, "[model]")
    blocks = token_blocks(ids, block_size, tokens) if tokens else lm_blocks(tokenizer, read_texts(corpus), block_size,
                                                                            source=", ".join(corpus))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(train.seed)).numpy()
    n_eval = max(1, int(len(blocks) * eval_fraction)) if len(blocks) > 1 and eval_fraction > 0 else 0
    eval_blocks = Blocks(blocks.blocks[order[:n_eval]]) if n_eval else None
    train_blocks = Blocks(blocks.blocks[order[n_eval:]])
    log(f"corpus: {len(blocks)} blocks of {block_size} tokens ({len(train_blocks)} train, {n_eval} held out)")
    seed_everything(train.seed)
    model = model_from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"model: {type(model).__name__}, {parameters:,} parameters")
    trainer = Trainer(model, train, train_blocks, eval_blocks, pad_id=pad if pad is not None else 0)
    result = trainer.train()
    out = Path(train.output_dir)
    final = out / "final"
    digest = checkpoint_sha256(final)
    files = [f.name for f in checkpoint_files(final)]
    # one file: `sha256sum -c` format; shards: the hash runs over the files in the order listed
    (final / "model.sha256").write_text(f"{digest}  {' + '.join(files)}\n")
    summary = {**result, "sha256": digest, "model": str(final), "parameters": parameters,
               "train_blocks": len(train_blocks), "eval_blocks": n_eval, "block_size": block_size}
    if eval_blocks is not None:
        # the checkpoint as saved (save_dtype), read back the way every later run reads it
        saved = load_model(final, device=trainer.device)
        eval_loss = trainer.evaluate(saved)["eval_loss"]
        summary.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)),
                       curve=str(out / "curve.csv"), curve_rows=write_curve(out / "log.jsonl", out / "curve.csv"))
    tmp = out / "pretrain.json.tmp"
    tmp.write_text(json.dumps({"summary": summary, "architecture": config.to_hf_dict(), "train": train.to_dict(),
                               "data": {"corpus": corpus, "tokens": tokens, "eval_fraction": eval_fraction}},
                              indent=2, default=str) + "\n")
    tmp.replace(out / "pretrain.json")
    return summary
