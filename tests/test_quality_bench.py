"""The quality benchmark's pipeline at CPU smoke scale (issue 9): prepare token arrays from the bundled DART subset
→ run a grid of cells with two worker processes → JSONL records → a second run skips them and reruns only what
was lost → the report writes the table. Same code as the GPU run (benches/quality/, ssm_offset/cli/grid.py)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from ssm_offset.cli import main
from ssm_offset.cli.grid import GridError, choose_lr, load_grid, read_results, run_grid

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "python" / "ssm_offset" / "data" / "bundled"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"quality_{name}", ROOT / "benches" / "quality" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from ssm_offset.models import MambaConfig, MambaForCausalLM
    from ssm_offset.models import checkpoint_sha256

    tmp = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    base = tmp / "bases" / "tiny"
    MambaForCausalLM(MambaConfig(vocab_size=2048, hidden_size=32, state_size=8, num_hidden_layers=2,
                                 eos_token_id=0, pad_token_id=1)).save_pretrained(base)
    (base / "model.sha256").write_text(checkpoint_sha256(base) + "  model.safetensors\n")
    manifest = _script("prepare").prepare(str(BUNDLED), str(BUNDLED / "tokenizer.json"), str(tmp / "data"), ["dart"],
                                          val_size=4, train_limit=48, test_limit=4, max_length=128, seed=0,
                                          log=lambda *_: None)
    grid = tmp / "grid.toml"
    grid.write_text(f"""
[grid]
bases = "{tmp / 'bases'}"
models = ["tiny"]
data = "{tmp / 'data'}"
results = "{tmp / 'quality.jsonl'}"
tasks = ["dart"]
methods = ["state-offset-h", "lora-inout"]
seeds = [0, 1]
val_limit = 4
[grid.lr]
state-offset-h = [1e-2, 1e-1]
lora-inout = [1e-2, 1e-1]
[train]
max_steps = 3
batch_size = 4
progress = false
[eval]
max_new_tokens = 4
limit = 4
""")
    summary = run_grid(str(grid), workers=2, log=lambda *_: None)
    return {"tmp": tmp, "grid": grid, "results": tmp / "quality.jsonl", "manifest": manifest, "summary": summary}


def test_prepare_carves_validation_from_training_sets_only(bench):
    from ssm_offset.data import Examples

    data = bench["tmp"] / "data" / "dart"
    splits = bench["manifest"]["tasks"]["dart"]["splits"]
    assert (splits["train"]["examples"], splits["val"]["examples"], splits["test"]["examples"]) == (48, 4, 4)
    val = Examples.load(data / "val.safetensors")
    refs = json.loads((data / "val.refs.json").read_text())
    assert len(refs) == len(val) == 4 and all(isinstance(r, list) and r for r in refs)
    # the prompt ids end where the labels start: generation starts from exactly the trained-on prompt
    for i in range(len(val)):
        labels = val[i]["labels"]
        assert (labels[: val.prompt_lengths[i]] == -100).all() and labels[val.prompt_lengths[i]] != -100
    # no validation triple set is among the training ones (the rate is never chosen on trained-on references)
    train_prompts = {tuple(Examples.load(data / "train.safetensors").prompt(i)) for i in range(48)}
    assert not train_prompts & {tuple(val.prompt(i)) for i in range(len(val))}


def test_grid_records_every_cell_and_repeats_seeds_at_the_chosen_rate(bench):
    records = [r for r in read_results(bench["results"]) if r["kind"] == "cell"]
    assert bench["summary"] == {"finished": 6, "errors": 0, "lost": 0, "pending": 0}
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["steps"] == 3 and r["base_sha256"] == (bench["tmp"] / "bases/tiny/model.sha256").read_text()[:64]
        assert {"bleu", "loss"} <= set(r["val"]) and {"bleu", "loss"} <= set(r["test"]) and r["test"]["n"] == 4
        assert 0 < r["trainable_params"] < r["total_params"] and r["wall_seconds"] > 0
    for method in ("state-offset-h", "lora-inout"):
        sweep = [r for r in records if r["method"] == method and r["seed"] == 0]
        again = [r for r in records if r["method"] == method and r["seed"] == 1]
        assert sorted(r["lr"] for r in sweep) == [1e-2, 1e-1]
        assert len(again) == 1 and again[0]["lr"] == choose_lr(sweep) and again[0]["phase"] == "seed"
    calls = [r for r in read_results(bench["results"]) if r["kind"] == "call"]
    assert calls[-1]["workers"] == 2 and calls[-1]["finished"] == 6


def test_resume_skips_finished_cells_and_reruns_a_lost_or_rebased_one(bench, capsys):
    results, grid = bench["results"], str(bench["grid"])
    assert main(["compare", "--grid", grid, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pending"] == 0
    # a killed run: the last record lost, half of it written
    lines = results.read_text().splitlines(keepends=True)
    last_cell = max(i for i, l in enumerate(lines) if '"kind": "cell"' in l)
    lost = json.loads(lines[last_cell])
    results.write_text("".join(lines[:last_cell] + lines[last_cell + 1:]) + lines[last_cell][:40])
    assert len([r for r in read_results(results) if r["kind"] == "cell"]) == 5
    summary = run_grid(grid, workers=1, log=lambda *_: None)
    assert summary["finished"] == 1
    cells = [r for r in read_results(results) if r["kind"] == "cell"]
    assert len(cells) == 6 and (cells[-1]["method"], cells[-1]["seed"]) == (lost["method"], lost["seed"])
    assert all(l.startswith("{") for l in results.read_text().splitlines())  # the torn line was cut
    # a base whose hash differs: every cell of it is due again, starting with the sweep
    sha = bench["tmp"] / "bases/tiny/model.sha256"
    original = sha.read_text()
    sha.write_text("0" * 64 + "  model.safetensors\n")
    try:
        assert run_grid(grid, dry_run=True, log=lambda *_: None)["pending"] == 4
    finally:
        sha.write_text(original)


def test_report_writes_the_table_plot_and_claims_section(bench):
    out = bench["tmp"] / "quality.md"
    text = _script("report").report(str(bench["grid"]), str(out))
    rows = [l for l in text.splitlines() if l.startswith("| state-offset-h") or l.startswith("| lora-inout")]
    assert len(rows) == 2 and all("±" in r and "@1e-0" in r for r in rows)
    assert "## Which of the paper's claims hold" in text and "mean rank over 1 tasks" in text
    assert out.with_suffix(".png").stat().st_size > 1000
    # the hand-written paragraph survives a regeneration
    out.write_text(text.replace("_(to be written", "It holds here. _(to be written"))
    assert "It holds here." in _script("report").report(str(bench["grid"]), str(out))


def test_results_reader_names_a_damaged_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"kind": "call"}\nnot json\n{"kind": "call"}\n')
    with pytest.raises(GridError, match=r"r.jsonl:2: not a JSON record"):
        read_results(path)


def test_rate_choice_breaks_metric_ties_by_validation_loss():
    rec = lambda lr, m, loss, status="ok": {"lr": lr, "metric": "accuracy", "status": status,  # noqa: E731
                                            "val": {"accuracy": m, "loss": loss}}
    assert choose_lr([rec(1e-3, 50.0, 0.9), rec(1e-2, 50.0, 0.7), rec(1e-1, 40.0, 0.1)]) == 1e-2
    assert choose_lr([rec(1e-3, 50.0, 0.9), rec(1e-2, 0.0, 0.1, "error")]) == 1e-3
    assert choose_lr([rec(1e-2, float("nan"), float("nan")), rec(1e-3, 10.0, 2.0)]) == 1e-3


def test_grid_file_errors_name_the_key(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\nmodels = ["a"]\ntasks = ["dart"]\nmethods = ["state-offset-h"]\nbogus = 1\n'
                    '[grid.lr]\nstate-offset-h = [1e-3]\n')
    with pytest.raises(GridError, match=r"unknown key\(s\) \['bogus'\]"):
        load_grid(str(path))
    path.write_text('[grid]\nmodels = ["a"]\ntasks = ["dart"]\nmethods = ["state-offset-h"]\n')
    with pytest.raises(GridError, match="state-offset-h needs a list of positive learning rates"):
        load_grid(str(path))


def test_sweep_extends_beyond_an_edge_rate_before_seeds(tmp_path):
    """extend_sweep = 1: a best rate at the top of the list gets one more rate above it (same ratio); seeds then
    run at the better of the two; a best rate inside the list queues the seeds at once."""
    from ssm_offset.cli.grid import Plan

    path = tmp_path / "g.toml"
    path.write_text('[grid]\nmodels = ["a"]\ntasks = ["dart"]\nmethods = ["state-offset-h", "lora-inout"]\n'
                    'seeds = [0, 1, 2]\nextend_sweep = 1\n'
                    '[grid.lr]\nstate-offset-h = [1e-3, 1e-2]\nlora-inout = [1e-3, 1e-2, 1e-1]\n')
    grid = load_grid(str(path))
    plan = Plan(grid, {"a": "b" * 64}, {"dart": "d"}, [])
    settings = {m: plan.settings("dart", m) for m in ("state-offset-h", "lora-inout")}

    def rec(method, lr, acc, seed=0):
        return {"kind": "cell", "status": "ok", "model": "a", "task": "dart", "method": method, "lr": lr,
                "seed": seed, "base_sha256": "b" * 64, "settings": settings[method], "metric": "bleu",
                "val": {"bleu": acc, "loss": 1.0}}

    records = [rec("state-offset-h", 1e-3, 1.0), rec("state-offset-h", 1e-2, 2.0),
               rec("lora-inout", 1e-3, 1.0), rec("lora-inout", 1e-2, 3.0), rec("lora-inout", 1e-1, 2.0)]
    plan = Plan(grid, {"a": "b" * 64}, {"dart": "d"}, records)
    queued = [(c.method, c.lr, c.seed, c.phase) for c in plan.queue]
    assert ("state-offset-h", 0.1, 0, "sweep") in queued  # 1e-2 won at the top: try 1e-1 first
    assert not any(m == "state-offset-h" and p == "seed" for m, _, _, p in queued)
    assert [(m, lr, sd) for m, lr, sd, p in queued if p == "seed"] == [("lora-inout", 1e-2, 1), ("lora-inout", 1e-2, 2)]
    # the extra rate loses: seeds at 1e-2, and no second extension even though 1e-2 is no longer an edge
    cell = next(c for c in plan.queue if c.method == "state-offset-h")
    plan.queue.remove(cell)
    plan.record(cell, rec("state-offset-h", 0.1, 0.5))
    assert plan.chosen[("a", "dart", "state-offset-h")] == 1e-2
    assert [(c.lr, c.seed) for c in plan.queue if c.method == "state-offset-h"] == [(1e-2, 1), (1e-2, 2)]
    # without extension (the default) the edge rate is taken as it is
    path.write_text(path.read_text().replace("extend_sweep = 1\n", ""))
    plain = Plan(load_grid(str(path)), {"a": "b" * 64}, {"dart": "d"}, records)
    assert plain.chosen[("a", "dart", "state-offset-h")] == 1e-2


def test_report_counts_a_later_seed_error_at_an_unchosen_rate_as_superseded(bench, tmp_path):
    """An error of seed 1 at a rate the sweep did not choose no longer matters (its group finished at the
    chosen rate); an error of the sweep's own seed still stands."""
    import shutil

    results = tmp_path / "quality.jsonl"
    shutil.copy(bench["results"], results)
    grid = tmp_path / "grid.toml"
    grid.write_text(bench["grid"].read_text().replace(str(bench["results"]), str(results)))
    report = _script("report").report
    chosen = re.search(r"\| state-offset-h .*?@([0-9.e+-]+)", report(str(grid), str(tmp_path / "q.md"))).group(1)
    other = 1e-1 if abs(float(chosen) - 1e-2) < 1e-9 else 1e-2
    proto = next(json.loads(l) for l in results.read_text().splitlines()
                 if '"kind": "cell"' in l and '"state-offset-h"' in l)
    for lr, seed in ((other, 1), (3e-1, 0)):
        bad = {**proto, "lr": lr, "seed": seed, "status": "error", "error": f"RuntimeError: boom at seed {seed}"}
        with open(results, "a") as f:
            f.write(json.dumps(bad) + "\n")
    text = report(str(grid), str(tmp_path / "q.md"))
    assert "1 failed at a rate the finished sweep did not choose" in text
    assert "1 still stand as errors" in text and "boom at seed 0" in text and "boom at seed 1" not in text
