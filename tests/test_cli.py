"""The command line: `info`, and `methods` (counts on the model equal the formulas it prints)."""
import re

import pytest
import torch

from ssm_offset.cli import main
from ssm_offset.cli.methods import formulas
from ssm_offset.models import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM


def test_info_reports_versions(capsys):
    assert main(["info", "--json"]) == 0
    out = capsys.readouterr().out
    assert f'"torch": "{torch.__version__}"' in out and '"cpu_count"' in out and '"scan_kernels"' in out


@pytest.mark.parametrize("model", [
    MambaForCausalLM(MambaConfig(vocab_size=100, hidden_size=64, state_size=16, num_hidden_layers=2)),
    Mamba2ForCausalLM(Mamba2Config(vocab_size=100, hidden_size=64, state_size=16, num_hidden_layers=2, num_heads=8,
                                   head_dim=16, n_groups=2)),
])
def test_methods_table_counts_equal_formulas(model, tmp_path, capsys):
    model.save_pretrained(tmp_path)
    assert main(["methods", "--model", str(tmp_path)]) == 0
    rows = {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^(\S+)\s+([\d,]+)\s+[\d.]+%", capsys.readouterr().out, re.M)}
    expected = formulas(model.config)
    assert set(expected) <= set(rows)
    for name, (count, _) in expected.items():
        assert rows[name] == count, name
    assert rows["full"] == sum(p.numel() for p in model.parameters())


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["methods", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_pretrain_transmamba_from_the_command_line(tmp_path, capsys):
    """`ssm-offset pretrain --arch transmamba` on the bundled corpus: a TransMamba checkpoint with its sha256."""
    import hashlib
    from pathlib import Path

    from ssm_offset.models import TransMambaForCausalLM, load_model

    bundled = Path(__file__).parent.parent / "python" / "ssm_offset" / "data" / "bundled"
    text = sorted((bundled / "gutenberg").iterdir())[0]
    assert main([
        "pretrain", "--arch", "transmamba", "--data.tokenizer", str(bundled / "tokenizer.json"),
        "--data.corpus", str(text), "--data.block_size", "64", "--model.hidden_size", "32",
        "--model.num_hidden_layers", "2", "--model.num_heads", "4", "--model.head_dim", "16", "--model.state_size", "16",
        "--model.n_groups", "1",
        "--model.transpoints_train", "[0, 32]", "--model.transpoints_infer", "[0, 32]",
        "--train.max_steps", "2", "--train.batch_size", "2", "--train.output_dir", str(tmp_path), "--train.progress", "false",
    ]) == 0
    model = load_model(tmp_path / "final")
    assert isinstance(model, TransMambaForCausalLM) and model.config.transpoints_train == [0, 32]
    assert (tmp_path / "final" / "model.sha256").read_text().split()[0] == hashlib.sha256(
        (tmp_path / "final" / "model.safetensors").read_bytes()).hexdigest()
