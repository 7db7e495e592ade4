"""Tokenizes ../shared/data's English corpus (32 texts, ~2.9M tokens) with the GPT-NeoX tokenizer through the Rust
pipeline into one flat token stream for the GPU machine, which has neither ../shared nor `datasets`.

    PYTHONPATH=python python benches/data/prepare_corpus.py [--out .carry/data/corpus-neox.npy]

Output: a 1-D uint16 .npy (the vocabulary, 50,277, fits), the texts in sorted file order, each followed by eos
(id 0), plus a .json beside it with the tokenizer's sha256, the files and their token counts. Block cutting and
the held-out split are the consumer's (`ssm-offset pretrain` with `[data] tokens = ...`)."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    from ssm_offset.data import Tokenizer

    p = argparse.ArgumentParser()
    p.add_argument("--corpus", default=str(SHARED / "corpus" / "english"))
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"))
    p.add_argument("--out", default=str(ROOT / ".carry" / "data" / "corpus-neox.npy"))
    args = p.parse_args()
    files = sorted(Path(args.corpus).glob("*.txt"))
    if not files:
        raise SystemExit(f"{args.corpus}: no *.txt files (is ../shared/data beside the checkout?)")
    tok = Tokenizer(args.tokenizer)
    if tok.vocab_size > np.iinfo(np.uint16).max + 1:
        raise SystemExit(f"{args.tokenizer}: vocabulary {tok.vocab_size} does not fit uint16")
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    # block_size 1: the pipeline's packing with eos after each document, uncut — the stream itself
    stream, _ = tok.pack(texts, 1, eos=True)
    stream = stream.reshape(-1).astype(np.uint16)
    counts = [len(tok.encode(t)) + 1 for t in texts]
    if sum(counts) != len(stream):
        raise SystemExit(f"token count mismatch: {sum(counts)} per file vs {len(stream)} packed")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npy")
    np.save(tmp, stream)
    tmp.replace(out)
    meta = {"tokens": int(len(stream)), "eos_id": tok.eos_id, "vocab_size": tok.vocab_size,
            "tokenizer_sha256": hashlib.sha256(Path(args.tokenizer).read_bytes()).hexdigest(),
            "files": {f.name: c for f, c in zip(files, counts)}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out}: {len(stream):,} tokens from {len(files)} files")


if __name__ == "__main__":
    main()
