"""Tokenizes the quality benchmark's tasks on the CPU machine into token arrays for the GPU machine (which has
neither ../shared nor `datasets`), through the Rust pipeline and the tasks' reference templates.

    PYTHONPATH=python python benches/quality/prepare.py [--root ../shared/data] [--out .carry/quality/data]

Per task, three splits: `train`, `val` carved from the training data with a fixed seed (the learning rate is
chosen on it; never on the test split) and `test` (GLUE's dev sets, which serve as test sets since GLUE's test
labels are not public; DART's 10% of the dev file by triple set, ssm_offset.data.dart_split). DART's validation
split takes whole triple sets, so none of its references is trained on. Output under --out:

    manifest.json                      tokenizer, options, per task: metric, sha256 of its files, split sizes
    tokenizer.json                     a copy (the GPU side decodes generated ids with it to score them)
    <task>/{train,val,test}.safetensors    input_ids, labels (-100 on the prompt), offsets, prompt_lengths
    <task>/{val,test}.refs.json        per example: the label string, or DART's list of reference texts
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def carve(task: str, records: List[Dict[str, Any]], val_size: int, train_limit: int, seed: int
          ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(train, val) from a task's training records. DART keeps triple sets whole: a validation record per set,
    holding all its references (as test records do)."""
    rng = np.random.default_rng(seed)
    if task != "dart":
        order = rng.permutation(len(records))
        if len(records) <= val_size:
            raise SystemExit(f"{task}: {len(records)} training records cannot give {val_size} for validation")
        val = [records[i] for i in order[:val_size]]
        train = [records[i] for i in order[val_size:]]
        return (train[:train_limit] if train_limit else train), val
    by_set: Dict[int, List[Dict[str, Any]]] = {}
    for line, r in enumerate(records, 1):
        if "set" not in r:
            raise SystemExit(f"dart train record {line}: no 'set' field (the triple set it belongs to)")
        by_set.setdefault(int(r["set"]), []).append(r)
    sets = sorted(by_set)
    if len(sets) <= val_size:
        raise SystemExit(f"dart: {len(sets)} triple sets cannot give {val_size} for validation")
    order = rng.permutation(len(sets))
    val_sets = {sets[i] for i in order[:val_size]}
    val = []
    for s in sorted(val_sets):
        refs = [r["text"] for r in by_set[s]]
        val.append({"triples": by_set[s][0]["triples"], "text": refs[0], "references": refs, "set": s})
    train = [r for s in sets if s not in val_sets for r in by_set[s]]
    if train_limit:
        train = [train[i] for i in np.sort(rng.permutation(len(train))[:train_limit])]
    return train, val


def encode_split(tok, task: str, records: List[Dict[str, Any]], max_length: int, out: Path, split: str,
                 with_references: bool) -> Dict[str, Any]:
    from ssm_offset.data import Examples, Template
    from ssm_offset.data.tasks import template

    tpl = Template(template(task))
    # truncate_prompt keeps the label (the end of the prompt goes first) so every example stays scoreable
    arrays, stats = tok.encode_pairs(records, tpl, max_length=max_length, truncation="truncate_prompt")
    kept = [int(i) for i in arrays["kept"]]
    if len(kept) != len(records):
        raise SystemExit(f"{task} {split}: {len(records) - len(kept)} records dropped by the tokenizer")
    Examples(arrays, f"{task} {split}").save(out / f"{split}.safetensors", {"task": task, "split": split})
    if with_references:
        refs = [r.get("references") or tpl.render(r)[1] for r in records]
        tmp = out / f"{split}.refs.json.tmp"
        tmp.write_text(json.dumps(refs, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(out / f"{split}.refs.json")
    return {"examples": len(kept), "tokens": int(stats["tokens"]), "truncated": int(stats["truncated"]),
            "p99_length": int(stats["p99_length"])}


def sha256_files(paths: List[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def prepare(root: str, tokenizer: str, out: str, tasks: List[str], val_size: int, train_limit: int,
            test_limit: int, max_length: int, seed: int, log=print) -> Dict[str, Any]:
    from ssm_offset.data import TASK_METRICS, Tokenizer, load_task

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(tokenizer)
    shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
    tok_sha = hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()
    manifest: Dict[str, Any] = {
        "tokenizer_sha256": tok_sha, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "vocab_size": tok.vocab_size,
        "options": {"root": str(root), "val_size": val_size, "train_limit": train_limit, "test_limit": test_limit,
                    "max_length": max_length, "seed": seed},
        "command": " ".join(["python", "benches/quality/prepare.py", *sys.argv[1:]]), "tasks": {}}
    for task in tasks:
        train, val = carve(task, load_task(task, root, "train"), val_size, train_limit, seed)
        test = load_task(task, root, "test")
        test = test[:test_limit] if test_limit else test
        d = out_dir / task
        d.mkdir(exist_ok=True)
        splits = {"train": encode_split(tok, task, train, max_length, d, "train", False),
                  "val": encode_split(tok, task, val, max_length, d, "val", True),
                  "test": encode_split(tok, task, test, max_length, d, "test", True)}
        files = sorted(p for p in d.iterdir() if p.suffix in (".safetensors", ".json"))
        manifest["tasks"][task] = {"metric": TASK_METRICS[task], "splits": splits,
                                   "sha256": hashlib.sha256((tok_sha + sha256_files(files)).encode()).hexdigest()}
        log(f"{task}: " + ", ".join(f"{k} {v['examples']} ({v['tokens']:,} tokens, {v['truncated']} truncated)"
                                    for k, v in splits.items()))
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out_dir / "manifest.json")
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(SHARED), help="the shared data layout (glue/, dart/)")
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"))
    p.add_argument("--out", default=str(ROOT / ".carry" / "quality" / "data"))
    p.add_argument("--tasks", default="sst2,cola,rte,dart")
    p.add_argument("--val-size", type=int, default=200, help="validation examples (DART: triple sets)")
    p.add_argument("--train-limit", type=int, default=8000, help="training examples kept (0: all)")
    p.add_argument("--test-limit", type=int, default=0, help="test examples kept (0: all)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not Path(a.root).is_dir():
        raise SystemExit(f"{a.root}: no such directory (is ../shared/data beside the checkout?)")
    prepare(a.root, a.tokenizer, a.out, [t.strip() for t in a.tasks.split(",") if t.strip()], a.val_size,
            a.train_limit, a.test_limit, a.max_length, a.seed)


if __name__ == "__main__":
    main()
