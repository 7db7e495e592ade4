"""Tokenization throughput (tokens/s) on the shared corpus (one document per line, GPT-NeoX
tokenizer, 2 cores): ssm_offset's Rust pipeline against `datasets.map(batched=True)` with a
`PreTrainedTokenizerFast`, and the `tokenizers` package's `encode_batch` and `encode_batch_fast`.
No disk cache is involved in any round (`encode_text` has none; `datasets` works in memory with
`load_from_cache_file=False`). Targets: >= 1.3x datasets.map and >= 0.9x encode_batch_fast, with
identical ids.

    PYTHONPATH=python python -m pytest benches/bench_tokenize.py --benchmark-only \
        --benchmark-json=benches/results/tokenize.json
"""

import glob
import os

import numpy as np
import pytest

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


@pytest.fixture(scope="module")
def corpus(shared_data):
    lines = []
    for f in sorted(glob.glob(os.path.join(shared_data, "corpus", "english", "*.txt"))):
        with open(f, encoding="utf-8") as fh:
            lines += fh.read().splitlines()
    return os.path.join(shared_data, "tokenizers", "gpt-neox-20b", "tokenizer.json"), lines


def _run(benchmark, fn, n_tokens_of):
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    n = n_tokens_of(out)
    benchmark.extra_info["tokens"] = n
    benchmark.extra_info["tokens_per_s"] = n / benchmark.stats.stats.mean
    return out


def test_ssm_offset(benchmark, corpus):
    from ssm_offset.data.tokenize import Tokenizer

    path, lines = corpus
    tok = Tokenizer(path)
    benchmark.group = "tokenize corpus"
    out = _run(benchmark, lambda: tok.encode_text(lines), lambda o: int(o["input_ids"].size))
    from tokenizers import Tokenizer as HF

    ref = HF.from_file(path).encode_batch_fast(lines[::50], add_special_tokens=False)
    ids, off = out["input_ids"], out["offsets"]
    assert all(e.ids == ids[off[i * 50] : off[i * 50 + 1]].tolist() for i, e in enumerate(ref))


def test_datasets_map(benchmark, corpus):
    datasets = pytest.importorskip("datasets")
    from transformers import PreTrainedTokenizerFast

    path, lines = corpus
    tok = PreTrainedTokenizerFast(tokenizer_file=path)
    ds = datasets.Dataset.from_dict({"text": lines})
    datasets.disable_progress_bars()

    def run():
        return ds.map(lambda b: tok(b["text"]), batched=True, load_from_cache_file=False, remove_columns=["text"])

    benchmark.group = "tokenize corpus"
    _run(benchmark, run, lambda o: int(sum(len(x) for x in o["input_ids"])))


@pytest.mark.parametrize("method", ["encode_batch", "encode_batch_fast"])
def test_tokenizers(benchmark, corpus, method):
    from tokenizers import Tokenizer as HF

    path, lines = corpus
    hf = HF.from_file(path)
    fn = getattr(hf, method)
    benchmark.group = "tokenize corpus"
    _run(benchmark, lambda: fn(lines, add_special_tokens=False), lambda o: sum(len(e.ids) for e in o))
