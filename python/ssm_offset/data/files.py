"""Records from local files, and records to training examples through the Rust tokenization pipeline.

    load_records(path)               .jsonl through the Rust reader (errors name file and line);
                                     .json / .csv / .parquet through `datasets`
    encode(tokenizer, records, template, max_length, truncation)  → (Examples, stats)
    lm_blocks(tokenizer, texts, block_size)                        → Blocks for pretraining
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

from .batching import Blocks, Examples
from .tokenize import DataError, Template, Tokenizer, read_jsonl

_DATASETS_FORMATS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Every record of a local data file as a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = list(read_jsonl(path))
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise DataError(f"{path}: record {i + 1} is a {type(r).__name__}, expected a JSON object")
    elif suffix in _DATASETS_FORMATS:
        try:
            import datasets
        except ImportError:
            raise ImportError(f"{path}: reading {suffix} files needs `datasets` (pip install 'ssm-offset[data]')"
                              ) from None
        datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(_DATASETS_FORMATS[suffix], data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps parser errors in several types
            raise DataError(f"{path}: could not be read as {suffix[1:]} ({type(exc).__name__}: {exc})") from None
        records = ds.to_list()
    else:
        raise DataError(f"{path}: unknown data format {suffix!r}; use .jsonl, .json, .csv or .parquet")
    if not records:
        raise DataError(f"{path}: the dataset is empty (no records)")
    return records


def as_template(spec: Union[str, Mapping[str, Any], Template]) -> Template:
    """A template from a task name ("dart", ...), a dict, a JSON string, or a Template."""
    if isinstance(spec, str) and not spec.lstrip().startswith("{"):
        from .tasks import template

        return Template(template(spec))
    return Template(spec)


def encode(tokenizer: Tokenizer, records: Iterable[Mapping[str, Any]], template, max_length: int,
           truncation: str = "truncate", source: str = "dataset") -> Tuple[Examples, Dict[str, Any]]:
    """Tokenizes (prompt, target) pairs: prompt and target separately, concatenated, eos after the target;
    labels -100 on the prompt. Over-long pairs are truncated (the target's end is cut) or dropped, as
    `truncation` says; stats count both. An empty result is an error naming `source`."""
    records = list(records)
    if not records:
        raise DataError(f"{source}: the dataset is empty (no records)")
    if truncation not in ("truncate", "truncate_prompt", "drop", "error"):
        raise DataError(f"truncation: got {truncation!r}, expected 'truncate', 'truncate_prompt', 'drop' or 'error'")
    try:
        arrays, stats = tokenizer.encode_pairs(records, as_template(template), max_length=max_length,
                                               truncation=truncation)
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None
    if stats["kept"] == 0:
        raise DataError(f"{source}: all {stats['records']} records were dropped as longer than max_length "
                        f"{max_length} (the longest is {stats['max_length_untruncated']} tokens); raise max_length "
                        "or use truncation='truncate'")
    return Examples(arrays, source), stats


def describe(stats: Dict[str, Any], max_length: int) -> str:
    """One line saying what the pipeline did (the counts of dropped and truncated records included)."""
    return (f"{stats['kept']} of {stats['records']} records kept, {stats['dropped']} dropped and "
            f"{stats['truncated']} truncated at max_length {max_length}; {stats['tokens']} tokens, "
            f"{stats['label_tokens']} of them targets; lengths p50 {stats['p50_length']} / p99 {stats['p99_length']}")


def lm_blocks(tokenizer: Tokenizer, texts: Iterable[str], block_size: int, source: str = "corpus") -> Blocks:
    """Documents concatenated with eos after each and cut into fixed blocks (the partial last one dropped)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{source}: no text")
    blocks, _ = tokenizer.pack(texts, block_size, eos=True)
    return Blocks(blocks, source)


def read_texts(paths: Iterable[Union[str, os.PathLike]]) -> List[str]:
    """Plain-text files, one document each; a directory stands for its *.txt files (sorted)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: no such text file")
            out.append(f.read_text(encoding="utf-8", errors="replace"))
    if not out:
        raise DataError(f"no text files in {[str(p) for p in paths]}")
    return out


__all__ = ["load_records", "as_template", "encode", "describe", "lm_blocks", "read_texts", "decode"]


_DECODERS: Dict[str, Any] = {}


def decode(tokenizer: Tokenizer, ids) -> str:
    """Text of token ids (special tokens skipped), through Hugging Face `tokenizers` reading the same file."""
    path = tokenizer.path
    if path not in _DECODERS:
        from tokenizers import Tokenizer as HFTokenizer

        _DECODERS[path] = HFTokenizer.from_file(path)
    return _DECODERS[path].decode([int(i) for i in ids], skip_special_tokens=True)
