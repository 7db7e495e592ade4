"""Data: the Rust tokenization pipeline and JSONL reader (tokenize.py), local files and encoding (files.py), the
paper's tasks as templates and readers (tasks.py), batching, packing and LM blocks (batching.py). Knows no model.

    records = load_records("train.jsonl")                  # or load_task("dart", root, "train")
    examples, stats = encode(Tokenizer("tokenizer.json"), records, "dart", max_length=256, truncation="drop")
    rows = pack(examples, max_length=1024)                 # several examples per row, with seq_idx
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "tokenize": ["DataError", "Template", "Tokenizer", "read_jsonl", "default_cache_dir"],
    "files": ["load_records", "as_template", "encode", "describe", "lm_blocks", "read_texts", "decode"],
    "tasks": ["TEMPLATES", "TASKS", "TASK_METRICS", "template", "load_task", "linearize_schema", "linearize_triples",
              "dart_split", "dart_records", "spider_database"],
    "batching": ["Examples", "Blocks", "pack", "collate", "target_count", "epoch_batches", "split_batch"],
}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    # lazy: importing ssm_offset.data does not load the Rust extension until something needs it
    for module, names in _EXPORTS.items():
        if name in names:
            import importlib

            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
