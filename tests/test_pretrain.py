"""Pretraining the benchmark's bases, at CPU scale: a pre-tokenized .npy corpus, the held-out split, stopping at
the best held-out loss with `final` = the best evaluation's weights, bf16 checkpoints in shards (save → load round
trip, one stable sha256), and the errors a user meets first."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssm_offset.cli import main
from ssm_offset.models import MambaConfig, checkpoint_sha256, load_model, model_from_config
from ssm_offset.models.io import checkpoint_files, parse_size, plan_shards
from ssm_offset.train import Trainer, TrainConfig, TrainConfigError, read_log

VOCAB = 97  # the tiny corpus' vocabulary; eos is 0


def write_tokens(path, n=4000, vocab=VOCAB, seed=0, meta=True):
    """A token stream with learnable structure (each document counts up from a random start) and eos between."""
    rng = np.random.default_rng(seed)
    docs = []
    while sum(map(len, docs)) < n:
        start, length = rng.integers(1, vocab), rng.integers(5, 40)
        docs.append(np.append((start + np.arange(length)) % (vocab - 1) + 1, 0))
    ids = np.concatenate(docs)[:n].astype(np.uint16)
    np.save(path, ids)
    if meta:
        path.with_suffix(".json").write_text(json.dumps({"tokens": n, "eos_id": 0, "vocab_size": vocab}))
    return ids


def pretrain_args(tokens, out, *extra):
    return ["pretrain", "--data.tokens", str(tokens), "--data.block_size", "16", "--data.eval_fraction", "0.1",
            "--model.model_type", "mamba", "--model.hidden_size", "16", "--model.num_hidden_layers", "2",
            "--model.state_size", "4", "--train.max_steps", "12", "--train.batch_size", "8", "--train.lr", "1e-2",
            "--train.eval_every", "3", "--train.load_best_model_at_end", "true", "--train.save_dtype", "bf16",
            "--train.max_shard_size", "4KB", "--train.output_dir", str(out), "--train.progress", "false",
            "--train.tensorboard", "false", *extra]


def result_of(capsys):
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])  # progress lines, then the result


def test_pretrain_from_tokens_keeps_the_best_evaluation_in_bf16_shards(tmp_path, capsys):
    tokens = tmp_path / "corpus.npy"
    write_tokens(tokens)
    out = tmp_path / "run"
    assert main(pretrain_args(tokens, out)) == 0
    result = result_of(capsys)
    summary = json.loads((out / "pretrain.json").read_text())["summary"]
    # 4000 tokens → 250 blocks of 16; 10% held out; vocab and eos from the .json beside the .npy
    assert (summary["train_blocks"], summary["eval_blocks"]) == (225, 25)
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["torch_dtype"]) == (VOCAB, 0, "bfloat16")
    # shards of at most 4 kB (files, headers included), listed by the index, all bf16
    files = checkpoint_files(final)
    assert files[0].name == "model.safetensors.index.json" and len(files) >= 3
    assert not (final / "model.safetensors").exists()
    assert all(f.stat().st_size <= 4000 for f in files[1:])
    assert {t.dtype for f in files[1:] for t in load_file(f).values()} == {torch.bfloat16}
    # one hash, the same in the printed result, pretrain.json and final/model.sha256
    assert result["sha256"] == summary["sha256"] == checkpoint_sha256(final)
    assert (final / "model.sha256").read_text().split()[0] == result["sha256"]
    # the curve: one row per evaluation; final = best/ = the evaluation with the lowest held-out loss
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,train_loss,eval_loss,eval_perplexity,lr"
    rows = [dict(zip(curve[0].split(","), map(float, line.split(",")))) for line in curve[1:]]
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    best = min(rows, key=lambda r: r["eval_loss"])
    assert result["best_step"] == int(best["step"]) and result["best"] == pytest.approx(best["eval_loss"], abs=1e-5)
    assert checkpoint_sha256(out / "best") == result["sha256"]
    # the saved bf16 model scores what training measured, up to bf16 rounding
    assert result["eval_loss"] == pytest.approx(result["best"], rel=2e-2)
    assert result["eval_perplexity"] == pytest.approx(np.exp(result["eval_loss"]))
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] < np.log(VOCAB) + 0.5  # it learned something


def test_final_is_the_best_evaluation_not_the_last_step(tmp_path):
    """Scripted scores make step 4 the best of 8; final/ must hold step 4's weights, not step 8's."""
    scores = iter([3.0, 1.0, 2.0, 4.0])
    snapshots = {}

    def metrics(model):
        snapshots[len(snapshots) + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"score": next(scores)}

    torch.manual_seed(0)
    model = model_from_config(MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=1))
    data = [{"input_ids": np.arange(i, i + 12) % VOCAB, "labels": np.arange(i, i + 12) % VOCAB} for i in range(32)]
    config = TrainConfig(output_dir=str(tmp_path), max_steps=8, batch_size=4, lr=1e-2, eval_every=2,
                         metric_for_best="score", load_best_model_at_end=True, progress=False, tensorboard=False,
                         resume=False)
    result = Trainer(model, config, data, metrics_fn=metrics).train()
    assert (result["best"], result["best_step"], result["step"]) == (1.0, 4, 8)
    saved = load_model(tmp_path / "final").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in snapshots[2].items())
    assert not all(torch.equal(saved[k], v) for k, v in snapshots[4].items())  # training moved on after step 4
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[2].items())


def test_sharded_save_round_trip_and_a_stable_hash(tmp_path):
    torch.manual_seed(1)
    model = model_from_config(MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2))
    for run in ("a", "b"):
        model.save_pretrained(tmp_path / run, dtype="bf16", max_shard_size=4000)
    assert checkpoint_sha256(tmp_path / "a") == checkpoint_sha256(tmp_path / "b")
    loaded = load_model(tmp_path / "a").state_dict()
    assert all(torch.equal(loaded[k], v.to(torch.bfloat16).float()) for k, v in model.state_dict().items())
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in model.state_dict().values())
    # saving again as one file replaces the shards (a stale index would be read otherwise), and the hash of a
    # single file is that file's own sha256
    model.save_pretrained(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.safetensors"]
    import hashlib

    assert checkpoint_sha256(tmp_path / "a") == hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    # and back to shards: the single file goes
    model.save_pretrained(tmp_path / "a", max_shard_size="8KB")  # fp32 this time
    assert not (tmp_path / "a" / "model.safetensors").exists()
    assert all(torch.equal(load_model(tmp_path / "a").state_dict()[k], v) for k, v in model.state_dict().items())


def test_shard_sizes_and_their_errors():
    assert (parse_size("16MiB"), parse_size("16MB"), parse_size("4KB"), parse_size(123)) == (16 << 20, 16 * 10**6, 4000, 123)
    for bad in ("16 parsecs", "0", "-1MB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)
    with pytest.raises(ValueError, match=r"tensor big \(100, 100\).*not split"):
        plan_shards({"big": torch.zeros(100, 100), "small": torch.zeros(3)}, 20000)
    with pytest.raises(TrainConfigError, match="max_shard_size"):
        TrainConfig(max_shard_size="lots")
    with pytest.raises(TrainConfigError, match="save_dtype"):
        TrainConfig(save_dtype="int8")


def test_token_input_errors_name_the_file(tmp_path, capsys):
    tokens = tmp_path / "corpus.npy"
    ids = write_tokens(tokens, n=600)
    # the model's vocabulary is smaller than the ids in the file
    assert main(pretrain_args(tokens, tmp_path / "a", "--model.vocab_size", "50")) == 2
    err = capsys.readouterr().err
    position = int(np.argmax(ids >= 50))
    assert "corpus.npy" in err and f"token id {ids[position]} at position {position}" in err and "vocab_size 50" in err
    assert not (tmp_path / "a").exists()
    # no .json beside it, no tokenizer, no vocab_size: say which field is needed
    bare = tmp_path / "bare.npy"
    write_tokens(bare, n=600, meta=False)
    assert main(pretrain_args(bare, tmp_path / "b")) == 2
    assert "vocab_size" in capsys.readouterr().err
    np.save(tmp_path / "floats.npy", np.zeros(100, dtype=np.float32))
    assert main(pretrain_args(tmp_path / "floats.npy", tmp_path / "c")) == 2
    assert "1-D integer array" in capsys.readouterr().err
    assert main(pretrain_args(tokens, tmp_path / "d", "--data.corpus", "texts/")) == 2
    assert "either corpus" in capsys.readouterr().err
