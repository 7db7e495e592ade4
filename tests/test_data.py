"""Data: the reference format, task templates, local files, bad input, packing with seq_idx (packed == unpacked),
LM blocks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssm_offset.data import (
    TASKS, DataError, Template, Tokenizer, collate, encode, load_records, load_task, lm_blocks, pack, template,
)
from ssm_offset.data.files import decode, describe
from ssm_offset.models import Mamba2Config, MambaConfig, model_from_config
from ssm_offset.peft import config_for, get_peft_model
from ssm_offset.train import token_loss_sum

BUNDLED = Path(__file__).resolve().parents[1] / "python" / "ssm_offset" / "data" / "bundled"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(BUNDLED / "tokenizer.json")


def test_reference_format_prompt_and_target_apart_loss_on_target(tok):
    rec = {"input": "Generate text: a : b : c", "label": "A is b of c."}
    ex, stats = encode(tok, [rec], "reference", max_length=128)
    e = ex[0]
    prompt, target = tok.encode("Generate text: a : b : c###"), tok.encode("A is b of c.")
    assert e["input_ids"].tolist() == prompt + target + [tok.eos_id]  # tokenized apart, concatenated, eos
    assert e["labels"].tolist() == [-100] * len(prompt) + target + [tok.eos_id]
    assert decode(tok, target) == "A is b of c."
    assert stats["kept"] == 1 and stats["label_tokens"] == len(target) + 1


@pytest.mark.parametrize("task", ["dart", "spider", "samsum", "sst2", "cola", "rte"])
def test_task_templates_render_the_shared_data(task, tok):
    if not SHARED.is_dir():
        pytest.skip("shared data not present")
    recs = load_task(task, str(SHARED), "train")[:20]
    prompt, target = Template(template(task)).render(recs[0])
    assert prompt.endswith("###") and target
    if task == "spider":
        assert target == target.lower() and "| " in prompt
    if task in ("sst2", "cola", "rte"):
        assert target in ("0", "1")
    ex, stats = encode(tok, recs, task, max_length=4096)
    assert len(ex) == 20 and stats["dropped"] == 0


def test_splits_are_the_stated_ones():
    if not SHARED.is_dir():
        pytest.skip("shared data not present")
    assert len(load_task("samsum", str(SHARED), "train")) == 818  # validation.json
    assert len(load_task("samsum", str(SHARED), "test")) == 819
    train, test = load_task("dart", str(SHARED), "train"), load_task("dart", str(SHARED), "test")
    assert not {r["set"] for r in train} & {r["set"] for r in test}  # split by triple set
    assert len(test) + len({r["set"] for r in train}) <= 2768 and abs(len(test) - 277) <= 2
    assert len(load_task("spider", str(SHARED), "test")) == 1034


def test_bundled_dart_subset_loads():
    train = load_records(BUNDLED / "dart" / "train.jsonl")
    test = load_records(BUNDLED / "dart" / "test.jsonl")
    assert len(train) > 1000 and len(test) > 50 and all(r["references"] for r in test)
    assert not {r["set"] for r in train} & {r["set"] for r in test}


def test_local_json_csv_parquet(tmp_path, tok):
    pytest.importorskip("datasets")
    import pandas as pd

    rows = [{"input": f"q{i}", "label": f"a{i}"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        assert load_records(tmp_path / f"d.{ext}") == rows, ext


def test_bad_input_messages(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "label": "b"}\n{"input": "a", "label": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_records(bad)
    with pytest.raises(DataError, match=r'missing field "label"'):
        encode(tok, [{"input": "x"}], "reference", 64, source="train.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_records(empty)
    with pytest.raises(DataError, match="empty"):
        encode(tok, [], "reference", 64)
    with pytest.raises(DataError, match=r"unknown template 'dartt'.*known templates"):
        encode(tok, [{"input": "x", "label": "y"}], "dartt", 64)
    with pytest.raises(DataError, match="unknown data format"):
        (tmp_path / "x.txt").write_text("hi")
        load_records(tmp_path / "x.txt")


def test_over_long_targets_truncated_or_dropped_with_counts(tok):
    recs = [{"input": "short", "label": "ok"}, {"input": "short", "label": "word " * 100}]
    ex, stats = encode(tok, recs, "reference", max_length=16, truncation="truncate")
    assert len(ex) == 2 and stats["truncated"] == 1 and max(ex.lengths) == 16
    assert "1 truncated" in describe(stats, 16)
    ex, stats = encode(tok, recs, "reference", max_length=16, truncation="drop")
    assert len(ex) == 1 and stats["dropped"] == 1 and "1 dropped" in describe(stats, 16)
    with pytest.raises(DataError, match="all 1 records were dropped"):
        encode(tok, recs[1:], "reference", max_length=16, truncation="drop")


def test_pack_tags_documents_and_masks_their_first_label():
    ex = [{"input_ids": np.arange(n) + 10, "labels": np.arange(n) + 10} for n in (3, 4, 5, 2)]
    rows = pack(ex, max_length=8)
    assert [r["seq_idx"].tolist() for r in rows] == [[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]
    assert rows[0]["labels"].tolist() == [-100, 11, 12, -100, 11, 12, 13]
    batch = collate([pack(ex[3:], 8)[0], rows[0]], pad_id=1, multiple_of=1)  # a 2-token row padded to 7
    assert batch["seq_idx"][0].tolist() == [0] * 7 and batch["labels"][0, 2:].tolist() == [-100] * 5
    assert batch["input_ids"][0, 2:].tolist() == [1] * 5
    # by default rows are rounded up to 8 tokens (the Mamba-1 kernels' fastest layout), padding as above
    batch = collate([pack(ex[3:], 8)[0], rows[0]], pad_id=1)
    assert batch["input_ids"].shape == (2, 8) and batch["seq_idx"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert batch["labels"][1, 7] == -100 and batch["input_ids"][1, 7] == 1
    assert collate([rows[0]] * 2, multiple_of=7)["input_ids"].shape == (2, 7)
    assert collate([{"input_ids": np.arange(9), "labels": np.arange(9)}])["labels"].shape == (1, 16)
    with pytest.raises(ValueError, match="multiple_of must be at least 1"):
        collate(rows, multiple_of=0)
    with pytest.raises(DataError, match="exceeds max_length"):
        pack(ex, max_length=4)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_packed_rows_train_exactly_like_unpacked_examples(arch):
    torch.manual_seed(0)
    if arch == "mamba":
        base = model_from_config(MambaConfig(vocab_size=40, hidden_size=16, state_size=4, num_hidden_layers=2))
    else:
        base = model_from_config(Mamba2Config(vocab_size=40, hidden_size=32, state_size=8, num_hidden_layers=2,
                                              num_heads=4, head_dim=16, n_groups=1, chunk_size=4))
    model = get_peft_model(base, config_for("initial-state")).double()  # re-applied at every document start
    g = torch.Generator().manual_seed(1)
    ex = []
    for n in (5, 3, 7, 4, 6):
        ids = torch.randint(2, 40, (n,), generator=g).numpy()
        labels = ids.copy()
        labels[: n // 2] = -100
        ex.append({"input_ids": ids, "labels": labels})
    packed = collate(pack(ex, max_length=16))
    assert "seq_idx" in packed and packed["input_ids"].shape[0] < len(ex)
    grads = []
    for batch in (packed, collate(ex)):
        model.zero_grad()
        loss = token_loss_sum(model, batch, "cpu")
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-10)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_lm_blocks(tok):
    blocks = lm_blocks(tok, ["one two three " * 20, "four five " * 30], block_size=16)
    assert blocks.blocks.shape[1] == 16 and len(blocks) >= 5
    item = blocks[0]
    assert (item["input_ids"] == item["labels"]).all()
    with pytest.raises(DataError, match="no complete block"):
        lm_blocks(tok, ["tiny"], block_size=512)
    with pytest.raises(DataError, match="no text"):
        lm_blocks(tok, ["  "], block_size=4)


def test_all_tasks_have_templates_and_metrics():
    from ssm_offset.data import TASK_METRICS

    assert set(TASKS) <= set(TASK_METRICS)
    for t in TASKS:
        Template(template(t))
