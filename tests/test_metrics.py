"""Metrics against hand-computed values and the reference packages; beam search against exhaustive search."""
import itertools
import math
import sqlite3
from pathlib import Path

import pytest
import torch

from ssm_offset.eval import metrics as M
from ssm_offset.models import Mamba2Config, beam_search, generate, model_from_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("Amanda will bring Tom cookies tomorrow.", "Amanda baked cookies and will bring Jerry some tomorrow."),
    ("", "nothing predicted"),
    ("Completely unrelated words here", "The weather is nice, isn't it?"),
    ("A B C D", "a b c d"),
]


def test_rouge_by_hand():
    # "the cat sat on the mat" vs "the cat is on the mat": 5 of 6 unigrams (the ×2, cat, on, mat) → P = R = 5/6;
    # bigrams: the-cat, on-the, the-mat = 3 of 5 → 3/5; LCS the cat on the mat = 5 → 5/6
    r = M.rouge_pair(*PAIRS[0])
    assert r["rouge1"] == pytest.approx(5 / 6) and r["rouge2"] == pytest.approx(3 / 5)
    assert r["rougeL"] == pytest.approx(5 / 6)
    assert M.rouge_pair("", "x") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert M.rouge(["a b"], ["a b"]) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}


def test_rouge_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for pred, ref in PAIRS:
        ours = M.rouge_pair(pred, ref)
        theirs = scorer.score(ref, pred)
        for k in ours:
            assert ours[k] == pytest.approx(theirs[k].fmeasure, abs=1e-12), (k, pred)


def test_bleu_by_hand_and_against_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)
    # hand: pred "the cat sat on the mat" vs ref "the cat sat on a mat": n-gram precisions 5/6, 3/5, 2/4, 1/3,
    # equal lengths (brevity penalty 1): BLEU = geometric mean
    hand = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])["bleu"] == pytest.approx(hand, abs=1e-9)
    # vs "the dog sat on the rug": 4/6, 2/5, 1/4, 0/3; the zero is smoothed by sacrebleu's 'exp' rule to 1/(2·3)
    hand = 100 * (4 / 6 * 2 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert M.bleu(["the cat sat on the mat"], ["the dog sat on the rug"])["bleu"] == pytest.approx(hand, abs=1e-9)
    # a short prediction: brevity penalty exp(1 - 6/4) on "the cat sat on" (precisions 1, 1, 1, 1)
    assert M.bleu(["the cat sat on"], ["the cat sat on a mat"])["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4))
    preds = [p for p, _ in PAIRS if p]
    refs = [[r, r.upper()] for p, r in PAIRS if p]
    expected = sacrebleu.corpus_bleu(preds, [[r[0] for r in refs], [r[1] for r in refs]]).score
    assert M.bleu(preds, refs)["bleu"] == pytest.approx(expected)


def test_classification_metrics_by_hand():
    preds = ["1", "1", "0", "0", "1", "0", "x"]
    refs = ["1", "0", "0", "1", "1", "0", "1"]
    # tp 2 (0, 4), fp 1 (1), fn 2 (3, 6: "x" is no label → negative), tn 2 (2, 5)
    assert M.accuracy(preds, refs)["accuracy"] == pytest.approx(100 * 4 / 7)
    assert M.f1(preds, refs)["f1"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 2))
    mcc = (2 * 2 - 1 * 2) / math.sqrt((2 + 1) * (2 + 2) * (2 + 1) * (2 + 2))
    assert M.matthews(preds, refs)["matthews"] == pytest.approx(100 * mcc)
    assert M.matthews(["1", "1"], ["1", "0"])["matthews"] == 0.0  # empty margin
    assert M.exact_match(["select  a from t ", "x"], ["select a from t", "y"])["exact_match"] == 50.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        M.accuracy(["1", "0"], ["1"])


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE singer (id INT, name TEXT, age INT);"
                       "INSERT INTO singer VALUES (1, 'Ann', 30), (2, 'Bo', 40), (3, 'Cy', 50);")
    conn.commit()
    conn.close()
    return path


def test_execution_accuracy(db):
    golds = ["select count(*) from singer", "select name from singer where age > 35",
             "select name from singer order by age desc", "select name from singer", "select name from singer"]
    preds = ["SELECT COUNT(id) FROM singer",                     # same result, other text: right
             "select name from singer where age >= 40",           # same rows: right
             "select name from singer order by age",              # ordered gold, other order: wrong
             "select nme from singer",                             # error: wrong
             "delete from singer"]                                 # read-only: refused, wrong
    acc = M.execution_accuracy(preds, golds, [db] * 5)
    assert acc["execution_accuracy"] == pytest.approx(40.0)
    assert M.run_query(db, "select count(*) from singer") == [(3,)]  # the delete did not happen
    endless = "with recursive r(x) as (select 1 union all select x + 1 from r) select count(*) from r"
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        M.run_query(db, endless, timeout=0.2)
    assert M.execution_accuracy([endless], ["select 1"], [db], timeout=0.2)["execution_accuracy"] == 0.0


def test_execution_accuracy_on_spider_gold():
    import json

    if not (SHARED / "spider" / "dev.json").is_file():
        pytest.skip("shared Spider data not present")
    from ssm_offset.data import load_task, spider_database

    recs = load_task("spider", str(SHARED), "test")[:30]
    dbs = [spider_database(str(SHARED), r["db_id"]) for r in recs]
    assert M.execution_accuracy([r["query"] for r in recs], [r["query"] for r in recs], dbs)[
        "execution_accuracy"] == 100.0
    raw = json.loads((SHARED / "spider" / "dev.json").read_text())[:30]
    # the original-case gold scores 100 against itself too (its string literals keep their case)
    assert M.execution_accuracy([r["query"] for r in raw], [r["query"] for r in raw], dbs)[
        "execution_accuracy"] == 100.0


def test_beam_search_finds_the_exhaustive_best():
    torch.manual_seed(0)
    model = model_from_config(Mamba2Config(vocab_size=12, hidden_size=32, state_size=8, num_hidden_layers=2,
                                           num_heads=4, head_dim=16, n_groups=1)).eval()
    prompt = [3, 5, 7]
    with torch.no_grad():
        def logprob(seq):
            full = torch.tensor([prompt + list(seq)])
            lp = torch.log_softmax(model(full).logits[0].float(), -1)
            return sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(seq))

        best = max(itertools.product(range(12), repeat=2), key=logprob)
    assert tuple(beam_search(model, prompt, 2, num_beams=12, eos_token_id=[], length_penalty=0.0)) == best
    greedy = generate(model, [prompt], 3, eos_token_id=[])[0].tolist()
    assert beam_search(model, prompt, 3, num_beams=1, eos_token_id=[]) == greedy
    wide = beam_search(model, prompt, 3, num_beams=4, eos_token_id=[], length_penalty=0.0)
    assert logprob(wide) >= logprob(greedy) - 1e-9
