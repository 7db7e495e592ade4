"""The training loop: a plain PyTorch loop a reader can follow from top to bottom.

    trainer = Trainer(model, TrainConfig(lr=1e-3, max_steps=200, save_every=50), train_data, eval_data)
    result = trainer.train()      # resumes from output_dir's newest checkpoint when there is one

`model` is a `PeftModel` (only the adapter trains and is saved) or a plain model (every parameter with
requires_grad trains). `train_data` is a sequence of examples (dicts of 1-D id sequences: input_ids, labels
with -100 where no loss is taken, optionally seq_idx for packed rows; see `ssm_offset.data`).

One optimiser step takes one *global batch*: batch_size · grad_accum · world_size examples. The loss of a
step is the sum of token losses over the global batch divided by its number of target tokens, so gradient
accumulation and data parallelism give the same step as one large batch would.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.batching import collate as default_collate
from ..data.batching import epoch_batches, lengths_of, split_batch, target_count
from ..peft import PeftModel
from ..peft import sdt as sdt_phases
from ..peft.delta import ParamDelta
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig, TrainConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant, linear or cosine decay to `min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    decay = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def active_peft_type(model: nn.Module) -> Optional[str]:
    if isinstance(model, PeftModel) and model.active_adapter is not None:
        return model.peft_config[model.active_adapter].peft_type
    return None


def trained_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors training changes: an adapter's (every tensor whose name holds an adapter name, masks
    included), or the whole state dict for a plain model and full fine-tuning."""
    state = model.state_dict()
    if isinstance(model, PeftModel) and active_peft_type(model) != "FULL":
        names = set(model.peft_config)
        state = {k: v for k, v in state.items() if names & set(k.split("."))}
    return state


def load_trained_state(model: nn.Module, tensors: Dict[str, torch.Tensor], source: str) -> None:
    expected = trained_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(tensors[k])


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each residual block in the backward instead of keeping its activations."""
    from torch.utils.checkpoint import checkpoint

    base = getattr(model, "base_model", model)
    for block in base.backbone.layers:
        if getattr(block, "_checkpointed", False):
            continue
        inner = block.forward

        def forward(hidden_states, cache=None, _inner=inner, **kw):
            if cache is not None or not torch.is_grad_enabled():
                return _inner(hidden_states, cache=cache, **kw)
            return checkpoint(_inner, hidden_states, use_reentrant=False, **kw)

        block.forward = forward
        block._checkpointed = True


def _sdt_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ParamDelta) and hasattr(m, "sdt_score")]


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: Sequence[Dict[str, Any]],
        eval_data: Optional[Sequence[Dict[str, Any]]] = None,
        *,
        collate: Optional[Callable] = None,
        pad_id: int = 0,
        metrics_fn: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
    ):
        if len(train_data) == 0:
            raise ValueError("train_data: the dataset is empty")
        if eval_data is not None and len(eval_data) == 0:
            raise ValueError("eval_data: the dataset is empty")
        if "seq_idx" in train_data[0] and active_peft_type(model) in ("PROMPT_TUNING", "PREFIX_TUNING"):
            raise TrainConfigError("packed rows (seq_idx) cannot take virtual tokens: prompt / prefix tuning puts "
                                   "them before a whole row, not before each example; train them unpacked")
        self.model = model
        self.config = config
        self.train_data = train_data
        self.eval_data = eval_data
        self.collate = collate or (lambda examples: default_collate(examples, pad_id))
        self.metrics_fn = metrics_fn
        self.world = distributed.setup()
        self.device = self._device()
        self.output_dir = Path(config.output_dir)
        self.history: List[Dict[str, Any]] = []
        self._best_state: Optional[Dict[str, torch.Tensor]] = None  # CPU copy of the best evaluation's weights

    # -- set-up ---------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.config.device != "auto":
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            return torch.device("cuda", self.world.local_rank)
        return torch.device("cpu")

    def _autocast(self):
        p = self.config.precision
        if self.device.type != "cuda" or p == "fp32":
            return contextlib.nullcontext()
        if p == "auto":
            p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return torch.autocast("cuda", dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _uses_fp16(self) -> bool:
        p = self.config.precision
        return self.device.type == "cuda" and (p == "fp16" or (p == "auto" and not torch.cuda.is_bf16_supported()))

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.world.size

    def _batches(self, epoch: int) -> List[List[int]]:
        lengths = lengths_of(self.train_data) if self.config.bucket_by_length else None
        # every micro-batch of every process needs at least one example
        return epoch_batches(len(self.train_data), self.global_batch, self.config.seed, epoch, lengths,
                             min_last=self.config.grad_accum * self.world.size)

    def total_steps(self) -> int:
        per_epoch = len(self._batches(0))
        if per_epoch == 0:
            raise ValueError(f"train_data: {len(self.train_data)} examples do not fill one micro-batch per "
                             f"process and accumulation step ({self.config.grad_accum * self.world.size})")
        return self.config.max_steps or max(1, math.ceil(self.config.epochs * per_epoch))

    # -- the loop -------------------------------------------------------------------------------------------
    def train(self) -> Dict[str, Any]:
        cfg, world = self.config, self.world
        seed_everything(cfg.seed)
        total = self.total_steps()
        model = self.model.to(self.device)
        model.train()
        peft_type = active_peft_type(model)
        if peft_type == "SDT" and cfg.sdt_warmup_steps == 0:
            raise TrainConfigError("SDT needs sdt_warmup_steps > 0 (steps of ΔA_log warm-up before selection)")
        if cfg.load_best_model_at_end and self.eval_data is None and self.metrics_fn is None:
            raise TrainConfigError("load_best_model_at_end needs evaluation data (or metrics_fn) to pick the best")
        if cfg.load_best_model_at_end and cfg.distributed == "fsdp" and world.active:
            raise TrainConfigError("load_best_model_at_end is not supported with distributed = 'fsdp' (the weights "
                                   "are sharded); use the best/ directory the Trainer writes")
        if cfg.distributed == "fsdp" and peft_type is not None:
            raise TrainConfigError("distributed = 'fsdp' is for full fine-tuning of a plain model (not a PeftModel); "
                                   "adapters are small and train with 'ddp'")
        params = [p for p in model.parameters() if p.requires_grad]  # SDT: every parameter of any phase
        if not params:
            raise ValueError("the model has no trainable parameters")
        if peft_type == "SDT":
            sdt_phases.begin_warmup(model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        net = distributed.wrap(model, world, "fsdp" if cfg.distributed == "fsdp" else "ddp", self.device)
        if cfg.compile:
            # only the training steps run compiled: evaluation, saving and checkpoints use `model` itself, so
            # state dicts keep their keys (a compiled wrapper prefixes them with `_orig_mod.`)
            net = torch.compile(net, backend=cfg.compile_backend, mode=cfg.compile_mode or None)
        if cfg.distributed == "fsdp" and world.active:
            params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
        scaler = torch.amp.GradScaler("cuda", enabled=self._uses_fp16())
        self.opt, self.sched, self.scaler = opt, sched, scaler

        step, early = 0, {"best": None, "bad_evals": 0, "stopped": False}
        latest = ckpt.latest_checkpoint(self.output_dir) if cfg.resume else None
        if latest is not None:
            step, early = self._resume(latest, model, opt, sched, scaler)
        logger = _Logger(self.output_dir, world.is_main, cfg.tensorboard, resumed_at=step if latest else None)
        bar = _progress(cfg.progress and world.is_main, total, step)
        tokens_seen, start_time, last_loss = 0, time.perf_counter(), None
        # the data position is a function of the step: batch `position` of epoch `epoch`'s seeded order
        per_epoch = len(self._batches(0))
        order_epoch, order = -1, []

        while step < total and not early["stopped"]:
            epoch, position = divmod(step, per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, self._batches(epoch)
            indices = order[position]
            lr = opt.param_groups[0]["lr"]  # the rate this step uses
            loss_sum, n_tokens, n_inputs = self._step(net, indices, opt, sched, scaler, params)
            step += 1
            if peft_type == "SDT":
                self._sdt_after_step(model, step, opt)
            loss_sum, n_tokens, n_inputs = distributed.all_reduce_sum([loss_sum, n_tokens, n_inputs], self.device)
            last_loss = loss_sum / max(n_tokens, 1)
            tokens_seen += n_inputs
            elapsed = time.perf_counter() - start_time
            if step % cfg.log_every == 0 or step == total:
                logger.log({"step": step, "epoch": epoch, "loss": last_loss, "lr": lr, "target_tokens": int(n_tokens),
                            "tokens_per_s": tokens_seen / elapsed, "grad_norm": self._last_grad_norm})
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_seen / elapsed:.0f}")
            at_end = step == total
            if (cfg.eval_every and step % cfg.eval_every == 0) or (at_end and self.eval_data is not None):
                self._evaluate_and_track(model, step, early, logger)
            if cfg.save_every and (step % cfg.save_every == 0 or at_end or early["stopped"]):
                self._save_checkpoint(model, opt, sched, scaler, step, epoch, position, early)
        bar.close()
        logger.close()
        if cfg.load_best_model_at_end and early["best"] is not None:
            self._restore_best(model)
        self._save_collectively(self.output_dir / "final")
        return {"step": step, "loss": last_loss, "best": early["best"], "best_step": early.get("best_step"),
                "stopped_early": early["stopped"], "seconds": time.perf_counter() - start_time,
                "log": str(self.output_dir / "log.jsonl")}

    def _restore_best(self, model) -> None:
        """Put the best evaluation's weights back into the model (load_best_model_at_end). They were kept in
        memory at full precision; a run resumed after its best evaluation reads them from best/ instead."""
        state = self._best_state
        if state is None:
            best = self.output_dir / "best"
            if isinstance(model, PeftModel) and active_peft_type(model) != "FULL":
                raise TrainConfigError(f"load_best_model_at_end: the best evaluation came before this resumed run; "
                                       f"load the adapter in {best} with PeftModel.from_pretrained")
            from ..models.io import read_tensors

            state, _ = read_tensors(best)
            state = {k: v for k, v in state.items() if k in trained_state(model)}
        load_trained_state(model, state, "best weights")

    def _step(self, net, indices, opt, sched, scaler, params):
        """One optimiser step on one global batch; returns this process's (loss sum, target tokens, inputs)."""
        cfg, world = self.config, self.world
        examples = [self.train_data[i] for i in indices]
        global_targets = sum(target_count(e) for e in examples)
        parts = split_batch(list(range(len(indices))), cfg.grad_accum * world.size)
        mine = [parts[k * world.size + world.rank] for k in range(cfg.grad_accum)]
        loss_total = 0.0
        for k, part in enumerate(mine):
            batch = self.collate([examples[i] for i in part])
            last = k == len(mine) - 1
            sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
            with sync:
                with self._autocast():
                    loss_sum = token_loss_sum(net, batch, self.device)
                # DDP averages gradients over processes: scale so the result is sum / global target tokens
                scaler.scale(loss_sum * (world.size / max(global_targets, 1))).backward()
            loss_total += float(loss_sum.detach())
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        self._last_grad_norm = float(norm)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        inputs = sum(len(examples[i]["input_ids"]) for part in mine for i in part)
        return loss_total, global_targets / world.size, inputs

    _last_grad_norm = 0.0

    # -- SDT: warm-up, selection, sparse training ---------------------------------------------------------
    def _sdt_after_step(self, model, step: int, opt) -> None:
        cfg = self.config
        if step < cfg.sdt_warmup_steps:
            sdt_phases.record_updates(model)
        elif step == cfg.sdt_warmup_steps:
            sdt_phases.record_updates(model)
            sdt_phases.select_dimensions(model, config=model.peft_config[model.active_adapter])
            opt.state.clear()  # the deltas restarted from zero: their moments from the warm-up no longer apply

    def _sdt_state(self, model) -> Dict[str, torch.Tensor]:
        out = {}
        for name, m in _sdt_layers(model):
            out[f"{name}.sdt_score"] = m.sdt_score
            if getattr(m, "sdt_prev", None) is not None:
                out[f"{name}.sdt_prev"] = m.sdt_prev
        return out

    def _sdt_restore(self, model, state: Dict[str, torch.Tensor], step: int) -> None:
        for name, m in _sdt_layers(model):
            m.sdt_score.copy_(state[f"{name}.sdt_score"])
            if f"{name}.sdt_prev" in state:
                m.sdt_prev = state[f"{name}.sdt_prev"].clone()
        if step >= self.config.sdt_warmup_steps:
            # the masks come back with the adapter tensors; selection also sets which parameters train
            sdt_phases.select_dimensions(model, config=model.peft_config[model.active_adapter])

    # -- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Optional[nn.Module] = None) -> Dict[str, float]:
        """Mean target-token loss over eval_data (summed over processes), plus `metrics_fn(model)`."""
        model = model or self.model
        was_training = model.training
        model.eval()
        out: Dict[str, float] = {}
        if self.eval_data is not None:
            loss, count = 0.0, 0
            mine = list(range(self.world.rank, len(self.eval_data), self.world.size))
            for i in range(0, len(mine), self.config.batch_size):
                batch = self.collate([self.eval_data[j] for j in mine[i : i + self.config.batch_size]])
                with self._autocast():
                    loss += float(token_loss_sum(model, batch, self.device))
                count += int((batch["labels"][:, 1:] != -100).sum())
            loss, count = distributed.all_reduce_sum([loss, count], self.device)
            out["eval_loss"] = loss / max(count, 1)
        if self.metrics_fn is not None:
            out.update(self.metrics_fn(model))
        model.train(was_training)
        return out

    def _evaluate_and_track(self, model, step: int, early: Dict[str, Any], logger) -> None:
        cfg = self.config
        metrics = self.evaluate(model)
        logger.log({"step": step, **metrics})
        if cfg.metric_for_best not in metrics:
            raise TrainConfigError(f"metric_for_best: {cfg.metric_for_best!r} is not among the evaluation's "
                                   f"metrics {sorted(metrics)}")
        value = metrics[cfg.metric_for_best]
        best = early["best"]
        better = best is None or (value > best if cfg.greater_is_better else value < best)
        if better:
            early["best"], early["best_step"], early["bad_evals"] = value, step, 0
            if cfg.load_best_model_at_end:
                self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in trained_state(model).items()}
            self._save_collectively(self.output_dir / "best")
        else:
            early["bad_evals"] += 1
            if cfg.early_stopping_patience and early["bad_evals"] >= cfg.early_stopping_patience:
                early["stopped"] = True
        distributed.barrier()

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, opt, sched, scaler, step, epoch, position, early) -> None:
        if self.config.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            tensors, optim = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            tensors, optim = trained_state(model), opt.state_dict()
        if self.world.is_main:
            tensors = {**tensors, **self._sdt_state(model)}
            state = {"optimizer": optim, "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": ckpt.rng_state()}
            meta = {"step": step, "epoch": epoch, "batch_in_epoch": position + 1, "early_stopping": early,
                    "world_size": self.world.size, "config": self.config.to_dict()}
            ckpt.save_checkpoint(self.output_dir, step, tensors, state, meta, self.config.keep_checkpoints)
        distributed.barrier()

    def _resume(self, path: Path, model, opt, sched, scaler):
        tensors, state, meta = ckpt.load_checkpoint(path)
        if meta.get("world_size", 1) != self.world.size:
            raise ValueError(f"{path}: written by {meta['world_size']} processes, resumed with {self.world.size}; "
                             "the data order would differ")
        step = int(meta["step"])
        sdt = {k: v for k, v in tensors.items() if ".sdt_" in k}
        if sdt:
            self._sdt_restore(model, sdt, step)
        tensors = {k: v for k, v in tensors.items() if ".sdt_" not in k}
        if self.config.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(model, opt, model_state_dict=tensors, optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            load_trained_state(model, tensors, str(path))
            opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        return step, meta["early_stopping"]

    def _save_collectively(self, directory: Path) -> None:
        """Every process calls this; the main one writes. FSDP first gathers the sharded parameters."""
        distributed.barrier()
        if self.config.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            from ..models import model_from_config

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.world.is_main:
                plain = model_from_config(self.model.config)
                plain.load_state_dict(full)
                plain.save_pretrained(directory, dtype=self.config.save_dtype or None,
                                      max_shard_size=self.config.max_shard_size or None)
        elif self.world.is_main:
            self.save(directory)
        distributed.barrier()

    def save(self, directory) -> None:
        """The trained result: an adapter directory (PeftModel) or a Hugging Face model directory, written
        atomically; a model directory takes save_dtype and max_shard_size (adapters are small and keep theirs)."""
        model = self.model
        if isinstance(model, PeftModel):
            model.save_pretrained(directory)
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(directory, dtype=self.config.save_dtype or None,
                                  max_shard_size=self.config.max_shard_size or None)
        else:
            raise TypeError(f"{type(model).__name__} has no save_pretrained")


def token_loss_sum(model, batch: Dict[str, torch.Tensor], device) -> torch.Tensor:
    """Σ next-token cross-entropy over target positions (labels != -100) of a batch, in fp32. The model computes
    it from its hidden states without returning logits (see CausalLM.forward's return_logits)."""
    kwargs = {"input_ids": batch["input_ids"].to(device), "labels": batch["labels"].to(device)}
    if "seq_idx" in batch:
        kwargs["seq_idx"] = batch["seq_idx"].to(device)
    return model(**kwargs, return_logits=False, loss_reduction="sum")["loss"]


class _Logger:
    """JSONL records in output_dir/log.jsonl (a resumed run first drops the records after its checkpoint, so
    the file holds one loss curve), and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, resumed_at: Optional[int]):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "log.jsonl"
        if resumed_at is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if _step_of(l) is not None and _step_of(l) <= resumed_at]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            os.replace(tmp, self.path)
        elif resumed_at is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resumed_at)
            except ImportError:
                self.tb = None

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def _step_of(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def read_log(path) -> List[Dict[str, Any]]:
    """The records of a log.jsonl. A last line cut short is left out: it is a record still being written, or the
    one a killed run was writing (a resumed run drops it too). A bad line anywhere else is an error naming it."""
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({exc.msg}): {line[:80]!r}") from None
    return records


__all__ = ["Trainer", "TrainConfig", "lr_factor", "token_loss_sum", "trained_state", "load_trained_state",
           "enable_gradient_checkpointing", "read_log", "seed_everything"]
