"""Task metrics, all on a 0–100 scale (as GLUE and the papers report them).

    rouge(predictions, references)          ROUGE-1/2/L F1 (SAMSum); rouge_score's tokenisation, no stemming
    bleu(predictions, references)           corpus BLEU with sacrebleu (DART); references: one list per prediction
    exact_match(predictions, references)    after whitespace normalisation
    execution_accuracy(preds, golds, dbs)   Spider: both queries run read-only on the sqlite file, results compared
    accuracy, f1, matthews                  GLUE (labels as strings, e.g. "0" / "1")
"""
from __future__ import annotations

import math
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union


def _check(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def normalize(text: str) -> str:
    return " ".join(text.split())


# -- ROUGE -------------------------------------------------------------------------------------------------------

def rouge_tokens(text: str) -> List[str]:
    """rouge_score's default tokeniser: lower-case, anything but [a-z0-9] is a space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _ngrams(tokens: List[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0 or overlap == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def _lcs(a: List[str], b: List[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_pair(prediction: str, reference: str) -> Dict[str, float]:
    """ROUGE-1, -2 (n-gram overlap F1) and -L (longest common subsequence F1) of one pair, in [0, 1]."""
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    out = {}
    for n in (1, 2):
        pn, rn = _ngrams(p, n), _ngrams(r, n)
        out[f"rouge{n}"] = _f1(sum((pn & rn).values()), sum(pn.values()), sum(rn.values()))
    out["rougeL"] = _f1(_lcs(p, r), len(p), len(r))
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    """Mean over pairs of ROUGE-1/2/L F1, ×100."""
    _check(predictions, references)
    scores = [rouge_pair(p, r) for p, r in zip(predictions, references)]
    return {k: 100 * sum(s[k] for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL")}


# -- BLEU --------------------------------------------------------------------------------------------------------

def bleu(predictions: Sequence[str], references: Sequence[Union[str, Sequence[str]]]) -> Dict[str, float]:
    """Corpus BLEU (sacrebleu, its default 13a tokenisation and exp smoothing); each reference entry is a string
    or a list of alternative references."""
    _check(predictions, references)
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("BLEU needs sacrebleu (pip install 'ssm-offset[train]')") from None
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max(len(r) for r in refs)
    # sacrebleu takes reference *streams*: stream k holds every prediction's k-th reference (None if absent)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), streams).score}


# -- exact match, classification ---------------------------------------------------------------------------------

def exact_match(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    _check(predictions, references)
    return {"exact_match": 100 * sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
            / len(predictions)}


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    _check(predictions, references)
    return {"accuracy": 100 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)}


def _confusion(predictions, references, positive: str):
    tp = fp = fn = tn = 0
    for p, r in zip(predictions, references):
        pp, rp = p.strip() == positive, r.strip() == positive
        tp += pp and rp
        fp += pp and not rp
        fn += rp and not pp
        tn += not pp and not rp
    return tp, fp, fn, tn


def f1(predictions: Sequence[str], references: Sequence[str], positive: str = "1") -> Dict[str, float]:
    """Binary F1 of the `positive` label (a prediction that is no label counts as negative)."""
    _check(predictions, references)
    tp, fp, fn, _ = _confusion(predictions, references, positive)
    return {"f1": 100 * (2 * tp / (2 * tp + fp + fn) if tp else 0.0)}


def matthews(predictions: Sequence[str], references: Sequence[str], positive: str = "1") -> Dict[str, float]:
    """Matthews correlation (CoLA's metric), ×100; 0 when a margin is empty."""
    _check(predictions, references)
    tp, fp, fn, tn = _confusion(predictions, references, positive)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {"matthews": 100 * ((tp * tn - fp * fn) / denom if denom else 0.0)}


# -- Spider execution accuracy -------------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def run_query(db: Union[str, Path], sql: str, timeout: float = 5.0) -> List[tuple]:
    """Rows of `sql` on the sqlite file `db`, opened read-only (a query cannot change it); aborted after
    `timeout` seconds (sqlite3.OperationalError 'interrupted')."""
    path = Path(db)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sqlite database")
    conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _same_result(pred: List[tuple], gold: List[tuple], ordered: bool) -> bool:
    if ordered:
        return pred == gold
    return Counter(map(_hashable, pred)) == Counter(map(_hashable, gold))


def _hashable(row):
    return tuple(round(v, 6) if isinstance(v, float) else v for v in row)


def execution_accuracy(predictions: Sequence[str], golds: Sequence[str], databases: Sequence[Union[str, Path]],
                       timeout: float = 5.0) -> Dict[str, float]:
    """Share of predictions whose result equals the gold query's on the same database (as a multiset of
    rows; as a list when the gold query orders its result). A prediction that fails or times out is wrong."""
    _check(predictions, golds)
    if len(databases) != len(golds):
        raise ValueError(f"{len(databases)} databases for {len(golds)} queries")
    correct = 0
    for pred, gold, db in zip(predictions, golds, databases):
        gold_rows = run_query(db, gold, timeout)  # a failing gold query is a data error: let it raise
        try:
            pred_rows = run_query(db, pred, timeout)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):
            continue
        correct += _same_result(pred_rows, gold_rows, "order by" in gold.lower())
    return {"execution_accuracy": 100 * correct / len(predictions)}


METRICS = {"rouge": rouge, "bleu": bleu, "exact_match": exact_match, "accuracy": accuracy, "f1": f1,
           "matthews": matthews}


def score(metric: str, predictions: Sequence[str], references: Sequence, databases: Optional[Sequence] = None
          ) -> Dict[str, float]:
    """One metric by name (`execution_accuracy` needs `databases`)."""
    if metric == "execution_accuracy":
        if databases is None:
            raise ValueError("execution_accuracy needs the database of each example")
        return execution_accuracy(predictions, references, databases)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS) + ['execution_accuracy']}")
    return METRICS[metric](predictions, references)


__all__ = ["rouge", "rouge_pair", "rouge_tokens", "bleu", "exact_match", "accuracy", "f1", "matthews",
           "execution_accuracy", "run_query", "score", "METRICS"]
