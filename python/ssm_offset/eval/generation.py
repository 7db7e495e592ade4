"""Generation-based evaluation: render each record's prompt with the task template, generate (greedy or beam
search), decode, and score the outputs against the targets with the task's metric."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..data.files import as_template, decode
from ..data.tokenize import Tokenizer
from ..models.generation import beam_search, generate
from .metrics import score


@torch.no_grad()
def generate_ids(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, num_beams: int = 1,
                 batch_size: int = 16, eos_id: Optional[int] = None, pad_id: int = 0) -> List[List[int]]:
    """The new token ids after each prompt (a list of ids), up to and without eos. Greedy with num_beams = 1
    (batched: prompts of equal length share a prefill, every row shares the decoding steps), else beam search
    (one prompt at a time)."""
    was_training = model.training
    model.eval()
    eos_ids = [] if eos_id is None else [eos_id]
    out: List[List[int]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            ids = [list(map(int, p)) for p in prompts[i : i + batch_size]]
            if any(len(x) == 0 for x in ids):
                raise ValueError("an empty prompt cannot be generated from")
            if num_beams == 1:
                new = generate(model, ids, max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id)
                out += [_until(r.tolist(), eos_id) for r in new]
            else:
                out += [_until(list(beam_search(model, x, max_new_tokens, num_beams, eos_token_id=eos_ids)), eos_id)
                        for x in ids]
    finally:
        model.train(was_training)
    return out


def generate_texts(model, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                   num_beams: int = 1, batch_size: int = 16) -> List[str]:
    """The decoded continuation of each prompt, up to eos (see `generate_ids`)."""
    rows = generate_ids(model, [tokenizer.encode(p) for p in prompts], max_new_tokens, num_beams, batch_size,
                        tokenizer.eos_id, tokenizer.pad_id)
    return [decode(tokenizer, r).strip() for r in rows]


def _until(tokens: List[int], eos: Optional[int]) -> List[int]:
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens


def evaluate_generation(model, tokenizer: Tokenizer, records: Sequence[Mapping[str, Any]], template, metric: str,
                        max_new_tokens: int = 64, num_beams: int = 1, databases: Optional[Sequence] = None,
                        batch_size: int = 16) -> Tuple[Dict[str, float], List[str]]:
    """(scores, predictions) of the model on `records`; a record's `references` (a list) is used for BLEU when
    present, else its rendered target."""
    tpl = as_template(template)
    pairs = [tpl.render(r) for r in records]
    predictions = generate_texts(model, tokenizer, [p for p, _ in pairs], max_new_tokens, num_beams, batch_size)
    references = [r.get("references") or t for r, (_, t) in zip(records, pairs)]
    if metric != "bleu":
        references = [t for _, t in pairs]
    return score(metric, predictions, references, databases), predictions


__all__ = ["generate_ids", "generate_texts", "evaluate_generation"]
