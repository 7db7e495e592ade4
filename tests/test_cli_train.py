"""The training commands end to end on tiny models: train (TOML + flag overrides + bad input), eval, generate,
pretrain (deterministic sha256), compare (table + PNG)."""
import json
from pathlib import Path

import pytest
import torch

from ssm_offset.cli import main
from ssm_offset.models import Mamba2Config, model_from_config

BUNDLED = Path(__file__).resolve().parents[1] / "python" / "ssm_offset" / "data" / "bundled"
TOKENIZER = str(BUNDLED / "tokenizer.json")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    model_from_config(Mamba2Config(vocab_size=2048, hidden_size=32, state_size=8, num_hidden_layers=2, num_heads=4,
                                   head_dim=16, n_groups=1, eos_token_id=0, pad_token_id=1)).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    lines = (BUNDLED / "dart" / "train.jsonl").read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:64]) + "\n")
    (d / "test.jsonl").write_text("\n".join((BUNDLED / "dart" / "test.jsonl").read_text().splitlines()[:4]) + "\n")
    return d


def write_config(path: Path, base_dir, data, out, extra: str = "") -> Path:
    path.write_text(f"""
[model]
path = "{base_dir}"
[method]
name = "state-offset-h"
[data]
tokenizer = "{TOKENIZER}"
train = "{data / 'train.jsonl'}"
eval = "{data / 'test.jsonl'}"
template = "dart"
max_length = 96
truncation = "drop"
[train]
output_dir = "{out}"
max_steps = 3
batch_size = 8
lr = 1e-2
progress = false
tensorboard = false
[eval]
metric = "bleu"
max_new_tokens = 4
limit = 2
{extra}
""")
    return path


def test_train_with_toml_and_overrides_then_eval_and_generate(tmp_path, base_dir, data, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "run.toml", base_dir, data, out)
    assert main(["train", str(cfg), "--train.max_steps", "2", "--method.name=lora-inout", "--data.pack", "true"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["train"]["max_steps"] == 2 and summary["config"]["method"]["name"] == "lora-inout"
    assert summary["config"]["data"]["pack"] is True and "bleu" in summary["summary"]
    assert (out / "final" / "adapter_config.json").is_file()
    assert len([r for r in (out / "log.jsonl").read_text().splitlines() if '"loss"' in r]) == 2
    capsys.readouterr()
    assert main(["eval", "--model", base_dir, "--adapter", str(out / "final"), "--tokenizer", TOKENIZER,
                 "--data", str(data / "test.jsonl"), "--template", "dart", "--limit", "2", "--max-new-tokens", "3",
                 "--num-beams", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 2
    assert main(["generate", "--model", base_dir, "--tokenizer", TOKENIZER, "--prompt", "Alice said",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Alice said")


def test_train_bad_input_is_one_clear_line_and_leaves_no_output(tmp_path, base_dir, data, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "run.toml", base_dir, data, out)
    cases = [
        (["--train.learning_rate", "1"], "unknown key 'learning_rate' in [train]"),
        (["--data.template", "dartt"], "unknown template 'dartt'"),
        (["--method.name", "lora-everything"], "unknown method 'lora-everything'"),
        (["--data.template", '{"prompt": "{question}###", "target": "{text}"}'], 'missing field "question"'),
        (["--data.max_length", "8"], "were dropped as longer than max_length 8"),
        # --compile reaches [train]: the backend is checked only when compiling
        (["--compile", "--train.compile_backend", "nope"], "compile_backend: got 'nope'"),
    ]
    for flags, message in cases:
        assert main(["train", str(cfg), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[eval]", "[evaluation]"))
    assert main(["train", str(bad)]) == 2
    assert "unknown section(s) ['evaluation']" in capsys.readouterr().err
    broken = data / "broken.jsonl"
    broken.write_text('{"triples": "a : b : c", "text": "x"}\n{"triples": \n')
    assert main(["train", str(cfg), "--data.train", str(broken)]) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err and not out.exists()


def test_pretrain_is_deterministic_with_sha256(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text((BUNDLED / "gutenberg" / "carroll-alice.txt").read_text()[:20000])
    digests = []
    for run in ("a", "b"):
        assert main(["pretrain", "--data.tokenizer", TOKENIZER, "--data.corpus", str(corpus), "--data.block_size",
                     "32", "--model.model_type", "mamba2", "--model.hidden_size", "32", "--model.num_hidden_layers",
                     "1", "--model.num_heads", "4", "--model.head_dim", "16", "--model.state_size", "8",
                     "--model.n_groups", "1", "--train.max_steps", "3", "--train.batch_size", "4",
                     "--train.output_dir", str(tmp_path / run), "--train.progress", "false"]) == 0
        out = capsys.readouterr().out
        result = json.loads(out[out.index("{\n"):])  # progress lines, then the result
        digests.append(result["sha256"])
        assert (tmp_path / run / "final" / "model.sha256").read_text().split()[0] == result["sha256"]
    assert digests[0] == digests[1]


def test_compare_prints_table_and_saves_plot(tmp_path, base_dir, data, capsys):
    out = tmp_path / "cmp"
    cfg = write_config(tmp_path / "run.toml", base_dir, data, out)
    assert main(["compare", str(cfg), "--methods", "state-offset-h,prompt", "--train.max_steps", "2"]) == 0
    text = capsys.readouterr().out
    for word in ("untuned", "state-offset-h", "prompt", "bleu", "trainable params", "loss_curves.png"):
        assert word in text
    assert (out / "loss_curves.png").stat().st_size > 1000
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["untuned", "state-offset-h", "prompt"]
    assert rows[1]["trainable_params"] == 2 * 4 * 16 * 8  # L·H·P·N
