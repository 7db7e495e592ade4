"""From tokenized examples to model inputs: datasets of examples, padding, packing with document boundaries,
plain-text LM blocks, and the (seeded, resumable) batch order.

An example is a dict of 1-D integer sequences: `input_ids`, `labels` (-100 where no loss is taken) and, for
packed rows, `seq_idx` (the document index of each position). A batch is the same dict of (batch, L) tensors.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .tokenize import DataError

Example = Dict[str, np.ndarray]


class Examples(Sequence):
    """Examples held as flat arrays (what `Tokenizer.encode_pairs` returns): item i is
    {input_ids, labels}[offsets[i]:offsets[i+1]]; `prompt(i)` its prompt ids when `prompt_lengths` is there.

    `save` / `load` keep them as a safetensors file with the Rust tokenization cache's layout (input_ids,
    labels, offsets, prompt_lengths), so a machine without the tokenizer or the raw data can train on them."""

    def __init__(self, arrays: Mapping[str, np.ndarray], source: str = "dataset"):
        if "offsets" not in arrays:
            raise ValueError("Examples need the flat layout (encode_pairs without padded=True)")
        self.input_ids = np.asarray(arrays["input_ids"], dtype=np.int64)
        self.labels = np.asarray(arrays.get("labels", arrays["input_ids"]), dtype=np.int64)
        self.offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        self.prompt_lengths = (np.asarray(arrays["prompt_lengths"], dtype=np.int64)
                               if arrays.get("prompt_lengths") is not None else None)
        if len(self.offsets) < 2:
            raise DataError(f"{source}: no examples (the dataset is empty, or every record was dropped)")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.input_ids) or np.any(np.diff(self.offsets) < 0) \
                or len(self.labels) != len(self.input_ids):
            raise DataError(f"{source}: offsets do not cut input_ids ({len(self.input_ids)} ids, {len(self.labels)} "
                            f"labels) into examples")
        if self.prompt_lengths is not None and (len(self.prompt_lengths) != len(self)
                                                or np.any(self.prompt_lengths > self.lengths)):
            raise DataError(f"{source}: prompt_lengths must give one length per example, none beyond it")

    def prompt(self, i: int) -> np.ndarray:
        """The prompt ids of example i (what generation starts from)."""
        if self.prompt_lengths is None:
            raise ValueError("these examples carry no prompt_lengths")
        return self.input_ids[self.offsets[i] : self.offsets[i] + self.prompt_lengths[i]]

    def save(self, path, metadata: Optional[Mapping[str, str]] = None) -> None:
        """Writes the arrays (int32 ids and labels) atomically to a safetensors file."""
        from pathlib import Path

        from safetensors.numpy import save_file

        tensors = {"input_ids": self.input_ids.astype(np.int32), "labels": self.labels.astype(np.int32),
                   "offsets": self.offsets}
        if self.prompt_lengths is not None:
            tensors["prompt_lengths"] = self.prompt_lengths.astype(np.int32)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "Examples":
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such token file") from None
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise DataError(f"{path}: not a readable safetensors token file ({exc})") from None
        missing = [k for k in ("input_ids", "offsets") if k not in arrays]
        if missing:
            raise DataError(f"{path}: missing tensor(s) {missing}; expected input_ids, labels, offsets[, prompt_lengths]")
        return cls(arrays, str(path))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Example:
        a, b = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.input_ids[a:b], "labels": self.labels[a:b]}

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class Blocks(Sequence):
    """Fixed-length LM blocks (n, block_size): the labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: np.ndarray, source: str = "corpus"):
        self.blocks = np.asarray(blocks, dtype=np.int64)
        if self.blocks.ndim != 2 or len(self.blocks) == 0:
            raise DataError(f"{source}: no complete block of tokens (a corpus shorter than one block?)")

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> Example:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}

    @property
    def lengths(self) -> np.ndarray:
        return np.full(len(self.blocks), self.blocks.shape[1])


def pack(examples: Sequence[Example], max_length: int) -> List[Example]:
    """Packs examples, in order, into rows of at most `max_length` tokens (first fit on the open row), each
    position tagged with its document's index in the row (`seq_idx`). The model resets the SSM state and
    the conv window at each document start, so a packed row computes what its examples would alone, and
    the label at a document's first position is -100 (nothing before it may predict it)."""
    rows: List[Example] = []
    cur: List[Example] = []
    used = 0

    def close():
        if cur:
            seq = np.concatenate([np.full(len(e["input_ids"]), j, dtype=np.int64) for j, e in enumerate(cur)])
            labels = []
            for e in cur:
                lab = np.array(e["labels"], dtype=np.int64)
                lab[0] = -100
                labels.append(lab)
            rows.append({"input_ids": np.concatenate([e["input_ids"] for e in cur]).astype(np.int64),
                         "labels": np.concatenate(labels), "seq_idx": seq})

    for e in examples:
        n = len(e["input_ids"])
        if n > max_length:
            raise DataError(f"pack: an example of {n} tokens exceeds max_length {max_length}; truncate or drop first")
        if used + n > max_length:
            close()
            cur, used = [], 0
        cur.append(e)
        used += n
    close()
    return rows


def collate(examples: Sequence[Example], pad_id: int = 0, multiple_of: int = 8) -> Dict[str, torch.Tensor]:
    """Right-pads to the longest example, rounded up to a multiple of `multiple_of`: input_ids with `pad_id`,
    labels with -100, seq_idx with its last value (padding continues the last document and is never a target, and
    a causal model's earlier positions do not see it).

    Rows of a multiple of 8 tokens are what the Mamba-1 CUDA forward's fastest kernel reads (16-byte vectors of
    16-bit values along L, cuda/README.md); at most 7 padding tokens a row buy it. `multiple_of=1` pads to the
    longest exactly."""
    if multiple_of < 1:
        raise ValueError(f"collate: multiple_of must be at least 1, got {multiple_of}")
    longest = max(len(e["input_ids"]) for e in examples)
    width = -(-longest // multiple_of) * multiple_of
    n = len(examples)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    labels = np.full((n, width), -100, dtype=np.int64)
    seq = np.zeros((n, width), dtype=np.int64) if "seq_idx" in examples[0] else None
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = e["input_ids"]
        labels[i, :k] = e["labels"]
        if seq is not None:
            seq[i, :k] = e["seq_idx"]
            seq[i, k:] = e["seq_idx"][-1] if k else 0
    batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}
    if seq is not None:
        batch["seq_idx"] = torch.from_numpy(seq)
    return batch


def target_count(example: Example) -> int:
    """Tokens the loss is taken on: labels at positions 1.. that are not -100 (position t predicts t+1)."""
    return int((np.asarray(example["labels"][1:]) != -100).sum())


def lengths_of(data: Sequence[Example]) -> np.ndarray:
    lengths = getattr(data, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths)
    return np.array([len(e["input_ids"]) for e in data])


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int, lengths: Optional[np.ndarray] = None,
                  min_last: int = 1) -> List[List[int]]:
    """The batches of one epoch, as index lists; a pure function of (seed, epoch), so a resumed run continues
    with the same order. With `lengths`, batches are length-bucketed: the shuffled indices are cut into
    megabatches of 50 batches, each sorted by length before being cut into batches, and the batch order is
    shuffled again. A last batch smaller than `min_last` is dropped."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_examples)
    if lengths is not None:
        mega = batch_size * 50
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(order, range(mega, len(order), mega))
        ]) if len(order) else order
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < min_last:
        batches.pop()
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def split_batch(indices: List[int], parts: int) -> List[List[int]]:
    """A global batch cut into `parts` micro-batches as evenly as possible (rank r of a world of w, micro-step
    k of a accumulation steps takes part k·w + r)."""
    return [a.tolist() for a in np.array_split(np.asarray(indices, dtype=np.int64), parts)]


__all__ = ["Examples", "Blocks", "pack", "collate", "target_count", "epoch_batches", "split_batch", "lengths_of"]
