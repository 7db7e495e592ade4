"""Tokenization pipeline, backed by the Rust core (`rust/src/tokenize/`).

A template is data — format strings over a record's fields — defined once for Rust and Python:

    template = Template({"prompt": "{dialogue}###", "target": "{summary}", "eos": True})
    tok = Tokenizer("tokenizer.json")
    arrays, stats = tok.encode_pairs(records, template, max_length=1024)
    arrays["input_ids"], arrays["labels"]     # flat int32; labels are -100 on the prompt
    arrays["offsets"]                          # int64, record i is input_ids[offsets[i]:offsets[i+1]]

Prompt and target are tokenized separately and concatenated, target followed by eos, as the
State-offset Tuning reference does. `padded=True` returns (n, width) arrays instead, padded with
the pad token (labels with -100). `encode_jsonl` streams a JSONL file and caches the result on
disk under a key hashing (tokenizer file, template, data file, options); a cache entry is a plain
safetensors file that can be shipped to a machine without `datasets` or this tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np

from .. import _core

__all__ = ["DataError", "Template", "Tokenizer", "read_jsonl", "default_cache_dir"]

DataError = _core.DataError
Truncation = Literal["truncate", "truncate_prompt", "drop", "error"]


def default_cache_dir() -> str:
    """`$SSM_OFFSET_CACHE/tokens`, else `~/.cache/ssm_offset/tokens`."""
    base = os.environ.get("SSM_OFFSET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ssm_offset")
    return os.path.join(base, "tokens")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Streams the records of a JSONL file, one per non-blank line. Errors (`DataError`) name the
    file and line: invalid JSON, invalid UTF-8, a line over 256 MiB."""
    return _core.JsonlReader(os.fspath(path))


class Template:
    """Format strings over a record's fields: `{"prompt": ..., "target": ..., "eos": bool}`.
    `{field}` inserts a field (non-strings as JSON), `{{` and `}}` are literal braces."""

    def __init__(self, spec: Mapping[str, Any] | str | Template) -> None:
        if isinstance(spec, Template):
            spec = spec.spec
        if isinstance(spec, Mapping):
            spec = json.dumps(dict(spec))
        self._core = _core.Template(spec)
        self.spec: dict[str, Any] = json.loads(self._core.to_json())

    @property
    def fields(self) -> list[str]:
        return self._core.fields()

    def render(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """(prompt, target) of one record."""
        return self._core.render(dict(record))

    def __repr__(self) -> str:
        return f"Template({self.spec!r})"


class Tokenizer:
    """A Hugging Face `tokenizer.json`, encoding in parallel (rayon). `eos_token` defaults to
    `<|endoftext|>` (GPT-NeoX), `pad_token` to the eos token."""

    def __init__(
        self, path: str | os.PathLike[str], eos_token: str | None = None, pad_token: str | None = None
    ) -> None:
        self._core = _core.Tokenizer(os.fspath(path), eos_token, pad_token)

    @property
    def path(self) -> str:
        return os.fspath(self._core.path)

    @property
    def eos_id(self) -> int | None:
        return self._core.eos_id

    @property
    def pad_id(self) -> int:
        return self._core.pad_id

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without special tokens."""
        return self._core.encode(text)

    def encode_text(self, texts: Iterable[str], eos: bool = False) -> dict[str, np.ndarray]:
        """Encodes texts in parallel: {"input_ids": flat int32, "offsets": int64, "lengths": int32}."""
        ids, offsets = self._core.encode_texts(texts if isinstance(texts, list) else list(texts), eos)
        return {"input_ids": ids, "offsets": offsets, "lengths": np.diff(offsets).astype(np.int32)}

    def encode_pairs(
        self,
        records: Iterable[Mapping[str, Any]],
        template: Template | Mapping[str, Any],
        max_length: int | None = None,
        truncation: Truncation = "truncate",
        padded: bool = False,
        pad_to: int | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Encodes (prompt, target) pairs rendered from `records` (dicts, e.g. a `datasets` batch
        turned into rows). Returns (arrays, stats): `input_ids`, `labels` (-100 on the prompt),
        `offsets` (flat layout) or (n, width) arrays if `padded`, `lengths`, `prompt_lengths`,
        `kept` (indices of records kept; `truncation="drop"` leaves out records over
        `max_length`). Stats: counts of records, dropped, truncated, tokens, length percentiles."""
        t = template if isinstance(template, Template) else Template(template)
        recs = records if isinstance(records, list) else list(records)
        return self._core.encode_pairs(recs, t._core, max_length, truncation, padded, pad_to)

    def encode_jsonl(
        self,
        path: str | os.PathLike[str],
        template: Template | Mapping[str, Any],
        max_length: int | None = None,
        truncation: Truncation = "truncate",
        padded: bool = False,
        pad_to: int | None = None,
        cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """`encode_pairs` over a JSONL file, streamed; errors name the file and line. Results are
        cached in `cache_dir` (default `default_cache_dir()`; `False` disables the cache); stats
        say `"cache": "hit" | "miss" | "off"` and give `"cache_file"`."""
        t = template if isinstance(template, Template) else Template(template)
        cd = None if cache_dir is False else os.fspath(cache_dir or default_cache_dir())
        return self._core.encode_jsonl(os.fspath(path), t._core, max_length, truncation, padded, pad_to, cd)

    def pack(
        self, texts: Iterable[str], block_size: int, eos: bool = True, pad_last: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Concatenates documents (eos after each) and cuts them into (n, block_size) int32 blocks;
        the partial last block is dropped, or padded with the pad token if `pad_last`."""
        return self._core.pack(texts if isinstance(texts, list) else list(texts), block_size, eos, pad_last)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r})"
