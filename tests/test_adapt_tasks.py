"""benches/adapt_tasks.py (issue 7's real-task run) end to end on CPU: a tiny random Mamba-2, the bundled tokenizer
and a few made-up records per task in the shared data layout; two seeds as two runs, then merged. Checks the
plumbing the GPU run gets one shot at, not the numbers."""
import csv
import json
import random
from pathlib import Path

import pytest
import torch

from ssm_offset.models import Mamba2Config, model_from_config

from test_bench_scripts import load_bench

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "python" / "ssm_offset" / "data" / "bundled" / "tokenizer.json"
WORDS = "the a film cat ran good bad very is was not on red green house".split()


def sentence(r, n=6):
    return " ".join(r.choice(WORDS) for _ in range(n))


def write_tsv(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        if header:
            w.writerow(header)
        w.writerows(rows)


def shared_layout(root: Path, n: int = 24) -> None:
    r = random.Random(0)
    for split in ("train", "dev"):
        write_tsv(root / f"glue/SST-2/{split}.tsv", [[sentence(r), r.randint(0, 1)] for _ in range(n)],
                  ["sentence", "label"])
        write_tsv(root / f"glue/CoLA/{split}.tsv", [["src", r.randint(0, 1), "", sentence(r)] for _ in range(n)])
        write_tsv(root / f"glue/RTE/{split}.tsv", [[i, sentence(r), sentence(r, 3), r.choice(
            ["entailment", "not_entailment"])] for i in range(n)], ["index", "sentence1", "sentence2", "label"])
    sets = [{"tripleset": [[sentence(r, 1), "near", sentence(r, 1)]], "annotations": [{"text": sentence(r, 4)}]}
            for _ in range(60)]  # the fixed 90/10 split by triple set leaves 6 for test
    (root / "dart").mkdir(parents=True)
    (root / "dart/dart-v1.1.1-full-dev.json").write_text(json.dumps(sets))
    tok = root / "tokenizers/gpt-neox-20b/tokenizer.json"
    tok.parent.mkdir(parents=True)
    tok.write_bytes(BUNDLED.read_bytes())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt_tasks")
    shared_layout(tmp / "shared")
    torch.manual_seed(0)
    model = model_from_config(Mamba2Config(vocab_size=2048, hidden_size=32, state_size=8, num_hidden_layers=2,
                                           num_heads=2, head_dim=32, n_groups=1, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(tmp / "base")
    return tmp, load_bench("adapt_tasks")


def test_prepare_copies_exactly_the_needed_files(setup):
    tmp, mod = setup
    mod.main(["--prepare", str(tmp / "carry"), "--data-root", str(tmp / "shared")])
    copied = sorted(str(p.relative_to(tmp / "carry")) for p in (tmp / "carry").rglob("*") if p.is_file())
    assert copied == sorted(mod.NEEDED)
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        (tmp / "shared/glue/RTE/dev.tsv").rename(tmp / "gone.tsv")
        try:
            mod.main(["--prepare", str(tmp / "carry2"), "--data-root", str(tmp / "shared")])
        finally:
            (tmp / "gone.tsv").rename(tmp / "shared/glue/RTE/dev.tsv")


def test_full_flow_two_seeds_then_merge(setup):
    tmp, mod = setup
    common = ["--model", str(tmp / "base"), "--data-root", str(tmp / "shared"), "--steps", "2", "--router-steps", "2",
              "--router-examples", "16", "--batch-size", "4", "--test", "5", "--route-test", "8", "--shots", "3",
              "--population", "4", "--iterations", "2", "--max-length", "64", "--store", str(tmp / "stores"),
              "--threads", "1"]
    for seed in (0, 1):
        mod.main(common + ["--seeds", str(seed), "--out", str(tmp / f"seed{seed}")])
    mod.main(["--merge", f"{tmp / 'seed0.json'},{tmp / 'seed1.json'},{tmp / 'never-ran.json'}",
              "--out", str(tmp / "merged"), "--command", "the command"])
    merged = json.loads((tmp / "merged.json").read_text())
    assert sorted(merged["seeds"]) == ["0", "1"]
    for seed, r in merged["seeds"].items():
        assert r["stages_done"] == ["experts", "loo", "classifier", "prompt"]
        assert sorted(r["experts"]) == sorted(mod.TASKS)
        route = r["routing_classifier"]
        assert route["requests"] == 8 and 0 <= route["accuracy"] <= 1 and route["chance"] == 0.25
        assert sum(sum(c.values()) for c in route["confusion"].values()) == 8
        prompt = r["routing_prompt"]
        assert prompt["categories"] == ["sentiment", "grammar", "inference"] and prompt["others_task"] == "dart"
        # requests routed to "others" are answered by the base weights, exactly
        assert prompt["others_answered_by_base"] >= 1 and prompt["others_equal_base"] is True
        for t, row in r["leave_one_out"].items():
            singles = [v for k, v in row.items() if k.startswith("expert_")]
            assert len(singles) == 3 and row["best_single"] == max(singles)
            assert row["shots_pick_score"] in singles and row["test_examples"] == 5
            assert len(row["alpha"]) == 1 and len(row["alpha"][0]) == 3
            assert (t == "dart") == ("majority" not in row)
            if t != "dart":  # accuracies are fractions of the 5 test examples
                assert all(round(v * 5, 6) == round(v * 5) for v in singles + [row["cem"], row["base"]])
    md = (tmp / "merged.md").read_text()
    for t in mod.TASKS:
        assert f"| {t} | 5 |" in md
    assert "over 16 held-out requests" in md and "the command" in md
    # the expert stores were written where --store says, one per seed
    assert (tmp / "stores/seed0").is_dir() and (tmp / "stores/seed1").is_dir()


def test_bad_arguments(setup):
    _, mod = setup
    with pytest.raises(SystemExit):
        mod.parse_args(["--model", "m", "--tasks", "sst2,mnli"])
    with pytest.raises(SystemExit):
        mod.parse_args(["--model", "m", "--stages", "loo,everything"])
    with pytest.raises(SystemExit):
        mod.parse_args([])
