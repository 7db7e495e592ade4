"""`ssm-offset experts list|add|remove` and `ssm-offset adapt` on a tiny model with a word-level tokenizer."""
import json
import shutil

import pytest
import torch

from ssm_offset.cli import main
from ssm_offset.models import MambaConfig, MambaForCausalLM
from ssm_offset.peft import config_for, get_peft_model

from test_adapt import _word_tokenizer


@pytest.fixture
def setup(tmp_path):
    tokenizer = _word_tokenizer(tmp_path)
    torch.manual_seed(0)
    base = MambaForCausalLM(MambaConfig(vocab_size=16, hidden_size=16, state_size=4, num_hidden_layers=2,
                                        eos_token_id=0, pad_token_id=0)).eval()
    model_dir = tmp_path / "model"
    base.save_pretrained(model_dir)
    shutil.copy(tokenizer, model_dir / "tokenizer.json")
    for i, name in enumerate(["alpha", "beta"]):
        peft = get_peft_model(base, config_for("state-offset-h"))
        with torch.no_grad():
            for p in peft.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(i))
        peft.save_pretrained(tmp_path / name)
        peft._unwrap(None)
    shots = tmp_path / "shots.jsonl"
    shots.write_text("\n".join(json.dumps(r) for r in [
        {"input": "a b", "output": "c"}, {"input": "b a", "output": "d"}, {"input": "e f a", "output": "c d"}]))
    return tmp_path, model_dir, shots


def test_experts_add_list_remove_and_adapt(setup, capsys):
    tmp, model, shots = setup
    store = str(tmp / "store")
    for name, task in [("alpha", "sentiment"), ("beta", "grammar")]:
        assert main(["experts", "add", "--store", store, "--name", name, "--adapter", str(tmp / name),
                     "--model", str(model), "--task", task, "--metrics", '{"accuracy": 0.5}']) == 0
    assert main(["experts", "list", "--store", store, "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "grammar" in out and "STATE_OFFSET" in out and '{"accuracy": 0.5}' in out
    assert main(["adapt", "--store", store, "--few-shot", str(shots), "--model", str(model),
                 "--iterations", "3", "--population", "8"]) == 0
    out = capsys.readouterr().out
    assert "mixture α" in out and "before (base model): accuracy" in out and "after  (mixture)" in out
    assert "time:" in out and "expert alpha" in out and "fp32 on cpu" in out
    assert main(["adapt", "--store", store, "--few-shot", str(shots), "--model", str(model),
                 "--iterations", "2", "--population", "4", "--precision", "bf16"]) == 0
    assert "bf16 on cpu" in capsys.readouterr().out
    assert main(["adapt", "--store", store, "--few-shot", str(shots), "--model", str(model), "--iterations", "2",
                 "--population", "4", "--granularity", "layer", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["alpha"]) == 2 and len(result["alpha"][0]) == 2 and result["seconds"] > 0
    assert main(["experts", "remove", "--store", store, "alpha"]) == 0
    assert "removed expert 'alpha'" in capsys.readouterr().out
    assert main(["experts", "list", "--store", store, "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["beta"]


def test_adapt_bad_input_is_a_one_line_error(setup, capsys):
    tmp, model, shots = setup
    store = str(tmp / "store")
    assert main(["experts", "list", "--store", store]) == 2  # no store there
    assert "no adapter store" in capsys.readouterr().err
    from ssm_offset.store import AdapterStore

    AdapterStore(store)
    assert main(["adapt", "--store", store, "--few-shot", str(shots), "--model", str(model)]) == 2
    assert "holds no experts" in capsys.readouterr().err
    assert main(["experts", "add", "--store", store, "--name", "alpha", "--adapter", str(tmp / "alpha"),
                 "--model", str(model)]) == 0
    bad = tmp / "bad.jsonl"
    bad.write_text('{"input": "a b", "output": "c"}\n{"input": "b"}\n')
    capsys.readouterr()
    assert main(["adapt", "--store", store, "--few-shot", str(bad), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "example 1 has no label" in err and "Traceback" not in err
    assert main(["experts", "remove", "--store", store, "nope"]) == 2
