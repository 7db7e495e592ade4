"""The Trainer: loss masking, schedules, accumulation, resume after SIGKILL, SDT phases, DDP on 2 CPU processes,
early stopping, gradient checkpointing, transformers.Trainer with a PeftModel, config errors."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssm_offset.data.batching import collate, epoch_batches
from ssm_offset.models import Mamba2Config, MambaConfig, model_from_config
from ssm_offset.peft import LoraConfig, config_for, get_peft_model
from ssm_offset.train import Trainer, TrainConfig, TrainConfigError, lr_factor, read_log, token_loss_sum
from ssm_offset.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "helpers" / "train_child.py"


def tiny_mamba2(vocab=40, seed=0):
    torch.manual_seed(seed)
    return model_from_config(Mamba2Config(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                          num_heads=4, head_dim=16, n_groups=1))


def tiny_mamba1(vocab=30, seed=0):
    torch.manual_seed(seed)
    return model_from_config(MambaConfig(vocab_size=vocab, hidden_size=16, state_size=4, num_hidden_layers=1))


def random_pairs(n=32, vocab=40, seed=1, prompt=4, target=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, vocab, (prompt + target,), generator=g).numpy()
        labels = ids.copy()
        labels[:prompt] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, batch_size=4, lr=1e-2, progress=False, tensorboard=False,
                resume=False)
    base.update(kw)
    return TrainConfig(**base)


# --- loss masking ------------------------------------------------------------------------------------------

def test_loss_is_taken_on_targets_only_and_falls(tmp_path):
    """Garbage prompts (random tokens, then a separator) and a learnable target (a fixed phrase): the target
    loss falls, and the prompt positions contribute nothing to the loss, so their loss does not."""
    g = torch.Generator().manual_seed(3)
    data = []
    for _ in range(48):
        prompt = torch.randint(6, 40, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        ids = torch.cat([prompt, torch.tensor([1]), torch.tensor([2, 3, 4, 5, 3, 4])]).numpy()
        labels = ids.copy()
        labels[: len(prompt) + 1] = -100
        data.append({"input_ids": ids, "labels": labels})
    unmasked = []  # the complement: loss on the prompt positions only
    for e in data:
        labels = e["input_ids"].copy()
        labels[e["labels"] != -100] = -100
        unmasked.append({"input_ids": e["input_ids"], "labels": labels})
    model = tiny_mamba2()  # a plain model: every parameter trains
    batch = collate(data[:8])
    logits = model(batch["input_ids"]).logits
    mask = batch["labels"][:, 1:] != -100
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1][mask], batch["labels"][:, 1:][mask], reduction="sum")
    assert torch.allclose(token_loss_sum(model, batch, "cpu"), by_hand, rtol=1e-6)

    def losses():
        return (Trainer(model, cfg(tmp_path), data, data).evaluate()["eval_loss"],
                Trainer(model, cfg(tmp_path), unmasked, unmasked).evaluate()["eval_loss"])

    target_before, prompt_before = losses()
    Trainer(model, cfg(tmp_path, max_steps=40, lr=1e-2), data).train()
    target_after, prompt_after = losses()
    assert target_after < 0.3 * target_before
    assert prompt_after > 0.9 * prompt_before  # never trained on: random tokens stay unpredictable


# --- schedules, batches, accumulation ----------------------------------------------------------------------

def test_lr_schedules_by_hand():
    c = TrainConfig(warmup_steps=4, schedule="linear", max_steps=14)
    assert [lr_factor(s, 14, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 14, c) == 1.0 and lr_factor(9, 14, c) == 0.5 and lr_factor(14, 14, c) == 0.0
    c = TrainConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 10, c) == pytest.approx(1.0)
    assert lr_factor(5, 10, c) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, 10, c) == pytest.approx(0.1)
    assert lr_factor(7, 10, TrainConfig(schedule="constant")) == 1.0


def test_batch_order_is_seeded_and_bucketing_groups_lengths():
    a = epoch_batches(100, 8, seed=1, epoch=0)
    assert a == epoch_batches(100, 8, seed=1, epoch=0) and a != epoch_batches(100, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(100))
    lengths = np.random.default_rng(0).integers(1, 200, 400)
    bucketed = epoch_batches(400, 8, seed=1, epoch=0, lengths=lengths)
    spread = np.mean([np.ptp(lengths[b]) for b in bucketed])
    plain = np.mean([np.ptp(lengths[b]) for b in epoch_batches(400, 8, seed=1, epoch=0)])
    assert spread < 0.3 * plain
    assert epoch_batches(10, 4, 0, 0, min_last=3)[-1] != 2 and len(epoch_batches(10, 4, 0, 0, min_last=3)) == 2


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    data = random_pairs(32)
    for d in data[::3]:  # uneven target counts: the loss must be normalised by the global batch's tokens
        d["labels"][5] = -100
    results = []
    for bs, acc in ((8, 1), (4, 2), (2, 4)):
        model = get_peft_model(tiny_mamba2(), config_for("lora-inout"))
        Trainer(model, cfg(tmp_path / f"{bs}", batch_size=bs, grad_accum=acc), data).train()
        results.append({k: v.clone() for k, v in model.adapter_state_dict("default").items()})
    for other in results[1:]:
        for k in results[0]:
            assert torch.allclose(results[0][k], other[k], atol=1e-6), k


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    data = random_pairs(16)
    out = []
    for gc in (False, True):
        model = get_peft_model(tiny_mamba2(), config_for("state-offset-h"))
        Trainer(model, cfg(tmp_path / str(gc), gradient_checkpointing=gc, max_steps=3), data).train()
        out.append(model.adapter_state_dict("default"))
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], atol=1e-6)


@pytest.mark.parametrize("make", [tiny_mamba1, tiny_mamba2], ids=["mamba", "mamba2"])
def test_compile_trains_like_eager_and_saves_plain_keys(tmp_path, make):
    """torch.compile with inductor (its CPU code generation works here: ~10-15 s a model on 2 cores) gives the
    eager losses and adapter; checkpoints and the saved adapter keep the model's own keys (no `_orig_mod.`)."""
    data = random_pairs(16, vocab=30)
    logs, adapters, saved = [], [], []
    for compiled in (False, True):
        model = get_peft_model(make(vocab=30), config_for("state-offset-h"))
        run = cfg(tmp_path / str(compiled), max_steps=3, save_every=3, compile=compiled)
        result = Trainer(model, run, data).train()
        logs.append([r["loss"] for r in read_log(result["log"]) if "loss" in r])
        adapters.append(load_file(str(tmp_path / str(compiled) / "final" / "adapter_model.safetensors")))
        saved.append(load_file(str(ckpt.latest_checkpoint(tmp_path / str(compiled)) / "model.safetensors")).keys())
    assert len(logs[0]) == 3 and np.allclose(logs[0], logs[1], rtol=1e-5, atol=1e-6)
    assert saved[0] == saved[1] and adapters[0].keys() == adapters[1].keys()
    assert not any("_orig_mod" in k for k in [*saved[1], *adapters[1]])
    for k in adapters[0]:
        assert torch.allclose(adapters[0][k], adapters[1][k], atol=1e-5), k


# --- checkpoints and resume --------------------------------------------------------------------------------

def _child(out, *extra, wait=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    cmd = [sys.executable, str(CHILD), str(out), *extra]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _losses(out):
    return {r["step"]: r["loss"] for r in read_log(Path(out) / "log.jsonl") if "loss" in r}


def _assert_same_run(a, b):
    pa, pb = load_file(str(Path(a) / "params.safetensors")), load_file(str(Path(b) / "params.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        assert (pa[k] - pb[k]).abs().max().item() <= 1e-6, k
    ra, rb = json.loads((Path(a) / "result.json").read_text()), json.loads((Path(b) / "result.json").read_text())
    assert abs(ra["loss"] - rb["loss"]) <= 1e-6
    la, lb = _losses(a), _losses(b)
    assert la.keys() == lb.keys() == set(range(1, 13))  # one loss curve: no step missing or repeated
    assert all(abs(la[s] - lb[s]) <= 1e-6 for s in la)


def test_sigkill_at_random_points_and_mid_checkpoint_then_resume(tmp_path):
    import argparse

    sys.path.insert(0, str(CHILD.parent))
    import train_child

    ref = tmp_path / "ref"  # the uninterrupted run, in this process (same code, one thread: the same numbers)
    train_child.run(argparse.Namespace(out=str(ref), slow=0.0, kill_in_checkpoint=0))

    # killed at a random moment between checkpoints (after at least one checkpoint)
    killed = tmp_path / "killed"
    target = random.Random(time.time_ns()).randint(4, 10)
    proc = _child(killed, "--slow", "0.15", wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(_losses(killed)) >= target if (killed / "log.jsonl").exists() else False:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists()
    for c in ckpt.checkpoints(killed):  # every checkpoint present is complete and readable
        ckpt.load_checkpoint(c)
    assert ckpt.checkpoints(killed), "the run was killed before its first checkpoint"
    resumed = _child(killed)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(ref, killed)

    # killed in the middle of writing its second checkpoint (step 6): the step-3 checkpoint is what resumes
    mid = tmp_path / "mid"
    died = _child(mid, "--kill-in-checkpoint", "2")
    assert died.returncode == -signal.SIGKILL
    assert [c.name for c in ckpt.checkpoints(mid)] == ["checkpoint-00000003"]
    assert list(mid.glob(".tmp-checkpoint-*")), "the half-written checkpoint should be in a temporary directory"
    ckpt.load_checkpoint(mid / "checkpoint-00000003")
    resumed = _child(mid)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(mid.glob(".tmp-checkpoint-*"))
    _assert_same_run(ref, mid)


def test_in_process_resume_through_sdt_phases(tmp_path):
    """SDT's warm-up, selection and sparse phase run through the Trainer; a run interrupted before or after the
    selection and resumed ends where the uninterrupted one does."""
    data = random_pairs(24, vocab=30)
    full = get_peft_model(tiny_mamba1(), config_for("sdt"))
    res = Trainer(full, cfg(tmp_path / "full", max_steps=8, sdt_warmup_steps=4), data).train()
    mixer = full.base_model.backbone.layers[0].mixer
    a_mask = [m for n, m in full.named_buffers() if "A_log" in n and "masks" in n][0]
    d, n = mixer.intermediate_size, mixer.state_size
    assert 0 < a_mask.sum() < d * n  # sparse: the selection ran
    for stop in (3, 6):  # interrupted before and after the selection at step 4
        part = tmp_path / f"part{stop}"
        t = Trainer(get_peft_model(tiny_mamba1(), config_for("sdt")),
                    cfg(part, max_steps=8, sdt_warmup_steps=4, save_every=stop), data)
        calls = {"n": 0}

        def stopping(*a, _orig=t._step, _calls=calls, _stop=stop):
            if _calls["n"] == _stop:
                raise KeyboardInterrupt
            _calls["n"] += 1
            return _orig(*a)

        t._step = stopping
        with pytest.raises(KeyboardInterrupt):
            t.train()
        again = get_peft_model(tiny_mamba1(), config_for("sdt"))
        r2 = Trainer(again, cfg(part, max_steps=8, sdt_warmup_steps=4, save_every=stop, resume=True), data).train()
        assert abs(r2["loss"] - res["loss"]) < 1e-6
        for k, v in full.adapter_state_dict("default").items():
            assert torch.allclose(v, again.adapter_state_dict("default")[k], atol=1e-6), k


# --- evaluation and early stopping -------------------------------------------------------------------------

def test_early_stopping_and_best_checkpoint(tmp_path):
    data = random_pairs(16)
    values = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0])
    model = get_peft_model(tiny_mamba2(), config_for("state-offset-y"))
    t = Trainer(model, cfg(tmp_path, max_steps=20, eval_every=2, early_stopping_patience=2, metric_for_best="acc",
                           greater_is_better=True), data, metrics_fn=lambda m: {"acc": next(values)})
    r = t.train()
    assert r["stopped_early"] and r["step"] == 8 and r["best"] == 0.6
    assert (tmp_path / "best" / "adapter_model.safetensors").is_file()
    evals = [rec for rec in read_log(tmp_path / "log.jsonl") if "acc" in rec]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]


# --- data parallel on two CPU processes ---------------------------------------------------------------------

def _ddp_worker(rank, world, init_file, out_dir, data):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = get_peft_model(tiny_mamba2(), config_for("lora-inout"))
    Trainer(model, TrainConfig(output_dir=out_dir, max_steps=4, batch_size=4, lr=1e-2, progress=False,
                               tensorboard=False, resume=False, save_every=2), data).train()
    torch.distributed.destroy_process_group()


def test_ddp_on_two_gloo_processes_equals_one_process(tmp_path):
    data = random_pairs(32)
    for d in data[::4]:
        d["labels"][6:] = -100  # different target counts per process: normalised by the global batch
    single = get_peft_model(tiny_mamba2(), config_for("lora-inout"))
    Trainer(single, cfg(tmp_path / "one", max_steps=4, batch_size=8), data).train()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two"), data),
                                nprocs=2, join=True)
    two = load_file(str(tmp_path / "two" / "final" / "adapter_model.safetensors"))
    for k, v in single.adapter_state_dict("default").items():
        assert torch.allclose(v, two[k], atol=1e-6), k
    one_log, two_log = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert all(abs(one_log[s] - two_log[s]) < 1e-6 for s in range(1, 5))


def _fsdp_worker(rank, world, init_file, out_dir, data):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    Trainer(tiny_mamba2(), TrainConfig(output_dir=out_dir, max_steps=3, batch_size=4, lr=1e-2, progress=False,
                                       tensorboard=False, resume=False, distributed="fsdp", save_every=2), data).train()
    torch.distributed.destroy_process_group()


def test_fsdp2_full_fine_tuning_on_two_gloo_processes_equals_one_process(tmp_path):
    data = random_pairs(32)
    single = tiny_mamba2()
    Trainer(single, cfg(tmp_path / "one", max_steps=3, batch_size=8), data).train()
    torch.multiprocessing.spawn(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two"), data),
                                nprocs=2, join=True)
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    state = single.state_dict()
    for k in two:  # sharded AdamW and reduce-scatter sum in another order: equal to float rounding
        assert torch.allclose(state[k], two[k], atol=1e-5), k
    assert ckpt.checkpoints(tmp_path / "two")  # the gathered checkpoint was written


# --- transformers.Trainer, config errors ---------------------------------------------------------------------

def test_peft_model_under_transformers_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = get_peft_model(tiny_mamba2(), config_for("state-offset-h"))
    data = [{k: torch.as_tensor(v) for k, v in e.items()} for e in random_pairs(8)]
    out = model(input_ids=data[0]["input_ids"][None], labels=data[0]["labels"][None])
    assert "loss" in out and list(out)[0] == "loss"
    before = {k: v.clone() for k, v in model.adapter_state_dict("default").items()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                          learning_rate=1e-2)
    result = transformers.Trainer(model=model, args=args, train_dataset=data).train()
    assert math.isfinite(result.training_loss)
    after = model.adapter_state_dict("default")
    assert any((after[k] - before[k]).abs().max() > 0 for k in before)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(TrainConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(TrainConfigError, match="lr = 'fast', expected a float"):
        TrainConfig.from_dict({"lr": "fast"})
    with pytest.raises(TrainConfigError, match="schedule: got 'step'"):
        TrainConfig(schedule="step")
    with pytest.raises(TrainConfigError, match="compile_backend: got 'fast'"):
        TrainConfig(compile=True, compile_backend="fast")
    with pytest.raises(TrainConfigError, match="compile_mode: 'max-autotune' is an inductor mode"):
        TrainConfig(compile_backend="aot_eager", compile_mode="max-autotune")
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0
    with pytest.raises(ValueError, match="empty"):
        Trainer(tiny_mamba2(), cfg(tmp_path), [])
    with pytest.raises(TrainConfigError, match="sdt_warmup_steps"):
        Trainer(get_peft_model(tiny_mamba1(), config_for("sdt")), cfg(tmp_path), random_pairs(8, vocab=30)).train()


def test_read_log_leaves_out_a_last_line_cut_short_and_names_a_bad_line(tmp_path):
    """A killed run (or one still writing) can leave its last record half written; anything else is corruption."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_log(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 2: not a JSON record"):
        read_log(log)
