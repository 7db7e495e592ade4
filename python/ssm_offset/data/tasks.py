"""The fine-tuning tasks of the State-offset Tuning paper, as data: a template per task (the Rust pipeline's
format: `{"prompt": ..., "target": ..., "eos": ...}`) and a reader that turns the task's files into flat
records holding the template's fields.

The reference format is `input + "###"` → `label + eos` with the loss on the label only. Splits, where the
shared data has no training split of its own:
    spider  train: train_spider.json (7,000)  test: dev.json (1,034; sqlite databases for execution accuracy)
    samsum  train: validation.json (818)      test: test.json (819)
    dart    train / test: a fixed 90 / 10 split of the dev file by triple set (seed 0); test records keep
            every reference text of their triple set (`references`)
    glue    train: train.tsv                  test: dev.tsv (GLUE's test labels are not public)
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .tokenize import DataError

TEMPLATES: Dict[str, Dict[str, Any]] = {
    # the reference's generic pair: any records with `input` and `label`
    "reference": {"prompt": "{input}###", "target": "{label}", "eos": True},
    "spider": {"prompt": "Create a sql request for the following question and schema:\n###{question}\n{schema}###",
               "target": "{query}", "eos": True},
    "samsum": {"prompt": "{dialogue}###", "target": "{summary}", "eos": True},
    "dart": {"prompt": "Generate text for the following RDF triples:\n{triples}###", "target": "{text}", "eos": True},
    "sst2": {"prompt": "Classify the sentiment of the sentence: 0 for negative, 1 for positive.\n{sentence}###",
             "target": "{label}", "eos": True},
    "cola": {"prompt": "Is the sentence grammatically acceptable? 1 for acceptable, 0 for unacceptable.\n{sentence}###",
             "target": "{label}", "eos": True},
    "rte": {"prompt": "Does the first sentence entail the second? 0 for entailment, 1 for not entailment.\n"
                      "{sentence1}\n{sentence2}###", "target": "{label}", "eos": True},
}

#: the metric each task is scored with (names of `ssm_offset.eval.metrics` entries)
TASK_METRICS = {"spider": "execution_accuracy", "samsum": "rouge", "dart": "bleu", "sst2": "accuracy",
                "cola": "matthews", "rte": "accuracy", "reference": "exact_match"}

TASKS = ("spider", "samsum", "dart", "sst2", "cola", "rte")


def template(name: str) -> Dict[str, Any]:
    """A task's template by name; an unknown name lists the known ones."""
    if name not in TEMPLATES:
        raise DataError(f"unknown template {name!r}; known templates: {sorted(TEMPLATES)} "
                        "(or give a template as data: {\"prompt\": ..., \"target\": ..., \"eos\": true})")
    return dict(TEMPLATES[name])


def load_task(name: str, root: str, split: str) -> List[Dict[str, Any]]:
    """Records of `split` ("train" or "test") of task `name` from the shared data layout under `root`."""
    if split not in ("train", "test"):
        raise DataError(f"split: got {split!r}, expected 'train' or 'test'")
    readers = {"spider": _spider, "samsum": _samsum, "dart": _dart, "sst2": _glue, "cola": _glue, "rte": _glue}
    if name not in readers:
        raise DataError(f"unknown task {name!r}; known tasks: {sorted(readers)}")
    return readers[name](Path(root), split, name)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the shared data layout, see data/SOURCES.md)")
    return path


# -- Spider --------------------------------------------------------------------------------------------------

def linearize_schema(table: Dict[str, Any]) -> str:
    """`| table : column , column | ...` over the original table and column names (lower-cased)."""
    columns: Dict[int, List[str]] = {}
    for t, c in table["column_names_original"]:
        if t >= 0:
            columns.setdefault(t, []).append(c.lower())
    return " ".join(f"| {name.lower()} : {' , '.join(columns.get(i, []))}"
                    for i, name in enumerate(table["table_names_original"]))


def _spider(root: Path, split: str, name: str) -> List[Dict[str, Any]]:
    base = root / "spider" if (root / "spider").is_dir() else root
    tables = {t["db_id"]: t for t in json.loads(_need(base / "tables.json").read_text())}
    rows = json.loads(_need(base / ("train_spider.json" if split == "train" else "dev.json")).read_text())
    out = []
    for r in rows:
        if r["db_id"] not in tables:
            raise DataError(f"{base}: db_id {r['db_id']!r} has no schema in tables.json")
        out.append({"question": r["question"], "schema": linearize_schema(tables[r["db_id"]]),
                    "query": " ".join(r["query"].split()).lower(), "db_id": r["db_id"]})
    return out


def spider_database(root: str, db_id: str) -> Path:
    base = Path(root) / "spider" if (Path(root) / "spider").is_dir() else Path(root)
    return base / "database" / db_id / f"{db_id}.sqlite"


# -- SAMSum ----------------------------------------------------------------------------------------------------

def _samsum(root: Path, split: str, name: str) -> List[Dict[str, Any]]:
    base = root / "samsum" if (root / "samsum").is_dir() else root
    rows = json.loads(_need(base / ("validation.json" if split == "train" else "test.json")).read_text())
    return [{"dialogue": r["dialogue"], "summary": r["summary"].strip()} for r in rows]


# -- DART ------------------------------------------------------------------------------------------------------

def linearize_triples(tripleset: List[List[str]]) -> str:
    """`subject : predicate : object | ...`, the reference's form."""
    return " | ".join(" : ".join(t) for t in tripleset)


def dart_split(n_sets: int, seed: int = 0, test_fraction: float = 0.1) -> Dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_sets)
    n_test = int(round(n_sets * test_fraction))
    return {"test": np.sort(order[:n_test]), "train": np.sort(order[n_test:])}


def dart_records(sets: List[Dict[str, Any]], split: str) -> List[Dict[str, Any]]:
    """Train: one record per (triple set, reference text); test: one per triple set, with all references."""
    out = []
    for i in dart_split(len(sets))[split]:
        s = sets[int(i)]
        triples = linearize_triples(s["tripleset"])
        texts = [a["text"].strip() for a in s["annotations"] if a["text"].strip()]
        if not texts:
            continue
        if split == "train":
            out += [{"triples": triples, "text": t, "set": int(i)} for t in texts]
        else:
            out.append({"triples": triples, "text": texts[0], "references": texts, "set": int(i)})
    return out


def _dart(root: Path, split: str, name: str) -> List[Dict[str, Any]]:
    base = root / "dart" if (root / "dart").is_dir() else root
    path = base / "dart-v1.1.1-full-dev.json"
    if not path.is_file():  # a bundled subset keeps its own split
        sub = base / f"{split}.jsonl"
        if sub.is_file():
            from .files import load_records

            return load_records(sub)
    return dart_records(json.loads(_need(path).read_text()), split)


# -- GLUE ------------------------------------------------------------------------------------------------------

_GLUE_DIRS = {"sst2": "SST-2", "cola": "CoLA", "rte": "RTE"}


def _glue(root: Path, split: str, name: str) -> List[Dict[str, Any]]:
    base = root / "glue" if (root / "glue").is_dir() else root
    path = _need(base / _GLUE_DIRS[name] / ("train.tsv" if split == "train" else "dev.tsv"))
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    out = []
    if name == "cola":  # no header: source, label, original label, sentence
        for line, r in enumerate(rows, 1):
            if len(r) < 4:
                raise DataError(f"{path}:{line}: expected 4 tab-separated columns, got {len(r)}")
            out.append({"sentence": r[3], "label": str(int(r[1]))})
        return out
    header = rows[0]
    for line, r in enumerate(rows[1:], 2):
        rec = dict(zip(header, r))
        if "label" not in rec:
            raise DataError(f"{path}:{line}: missing field 'label'")
        if name == "rte":
            out.append({"sentence1": rec["sentence1"], "sentence2": rec["sentence2"],
                        "label": "0" if rec["label"] == "entailment" else "1"})
        else:
            out.append({"sentence": rec["sentence"].strip(), "label": rec["label"]})
    return out


def default_data_root() -> Optional[str]:
    """$SSM_OFFSET_DATA, if set."""
    return os.environ.get("SSM_OFFSET_DATA")


__all__ = ["TEMPLATES", "TASKS", "TASK_METRICS", "template", "load_task", "linearize_schema", "linearize_triples",
           "dart_split", "dart_records", "spider_database", "default_data_root"]
