"""Text generation shared by every model: prefill, then one recurrent step per new token.

Prompts of different lengths are prefilled separately (prompts of equal length together) and their caches
stacked into one batch for decoding. Left padding is not exact for an SSM: the pad tokens would move the conv
window and the state, and a learned initial state would no longer sit at the start of each prompt. Prefilling
apart keeps every row exactly what generating that prompt alone gives.
"""
from __future__ import annotations

from collections import defaultdict
from typing import List, Optional, Sequence, Union

import torch

Prompts = Union[torch.Tensor, Sequence[Union[Sequence[int], torch.Tensor]]]


@torch.no_grad()
def generate(
    model,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_token_id: Union[int, Sequence[int], None] = None,
    pad_token_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
) -> torch.Tensor:
    """Generate up to `max_new_tokens` tokens after each prompt; returns only the new tokens, (batch, T).

    prompts: a (batch, L) LongTensor, or a list of prompts (lists of ids or 1-D tensors) of any lengths.
    Greedy unless `do_sample`; sampling applies `temperature`, then `top_k`, then `top_p` (nucleus), each
    optional. Reproducible with `seed` (or your own `generator`, on the model's device).
    eos_token_id: an id or list of ids ending a row (default: the config's; pass [] to never stop); a
    finished row continues with `pad_token_id` (default: the config's, else the first eos id, else 0).
    Decoding stops early when every row has finished, so T may be below max_new_tokens.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: got {max_new_tokens}, expected >= 0")
    if not do_sample and (temperature, top_k, top_p) != (None, None, None):
        raise ValueError("temperature / top_k / top_p are sampling settings: pass do_sample=True with them")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature: got {temperature}, expected > 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: got {top_k}, expected >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: got {top_p}, expected in (0, 1]")
    device = model.lm_head.weight.device
    rows = _as_rows(prompts, device)
    if generator is None and seed is not None:
        generator = torch.Generator(device).manual_seed(seed)
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), device=device,
                       dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0

    new: List[torch.Tensor] = []
    if max_new_tokens == 0:
        return torch.empty(len(rows), 0, dtype=torch.long, device=device)
    logits, cache = prefill(model, rows)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        sampled = _next_token(logits, do_sample, temperature, top_k, top_p, generator)
        token = torch.where(finished, torch.full_like(sampled, pad_token_id), sampled)
        new.append(token)
        finished |= torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        # finished rows keep stepping on their own (valid) tokens; the pad id need not be a vocabulary entry
        logits = model(sampled[:, None], cache=cache).logits[:, -1]
    return torch.stack(new, dim=1)


def prefill(model, rows: List[torch.Tensor]):
    """Run each group of equal-length prompts through the model with a fresh cache; return the logits at
    every prompt's last position (batch, vocab) and the stacked cache, both in the prompts' order."""
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        groups[len(r)].append(i)
    order, logits, caches = [], [], []
    for idx in groups.values():
        out = model(torch.stack([rows[i] for i in idx]), use_cache=True, logits_to_keep=1)
        order += idx
        logits.append(out.logits[:, -1])
        caches.append(out.cache)
    inverse = torch.argsort(torch.tensor(order, device=rows[0].device))
    cache = caches[0] if len(caches) == 1 else type(caches[0]).cat(caches)
    return torch.cat(logits)[inverse], (cache if len(caches) == 1 else cache.select(inverse))


def _as_rows(prompts: Prompts, device) -> List[torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts: got a tensor of shape {tuple(prompts.shape)}, expected (batch, L)")
        rows = list(prompts.to(device))
    else:
        rows = [torch.as_tensor(p, dtype=torch.long, device=device) for p in prompts]
    if not rows:
        raise ValueError("prompts: empty batch")
    for i, r in enumerate(rows):
        if r.dim() != 1 or len(r) == 0:
            raise ValueError(f"prompts[{i}]: got shape {tuple(r.shape)}, expected a non-empty 1-D sequence of ids")
    return [r.long() for r in rows]


def _next_token(logits, do_sample, temperature, top_k, top_p, generator) -> torch.Tensor:
    logits = logits.float()  # sampling arithmetic in fp32 whatever the model's dtype
    if not do_sample:
        return logits.argmax(-1)
    if temperature is not None:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, sorted_idx, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def beam_search(
    model,
    prompt: Union[Sequence[int], torch.Tensor],
    max_new_tokens: int,
    num_beams: int = 4,
    *,
    eos_token_id: Union[int, Sequence[int], None] = None,
    length_penalty: float = 1.0,
) -> List[int]:
    """Beam search for one prompt; returns the new tokens of the best hypothesis (eos excluded).

    The prompt is prefilled once and its cache copied to every beam; each step scores all continuations of
    the live beams, keeps the `num_beams` best, and reorders the cache rows to follow their beams. A
    hypothesis ends at eos; the search stops when `num_beams` hypotheses have ended (or at max_new_tokens),
    and the best by sum of log-probabilities / length ** length_penalty wins (Hugging Face's rule)."""
    if num_beams < 1:
        raise ValueError(f"num_beams: got {num_beams}, expected >= 1")
    if max_new_tokens <= 0:
        return []
    device = model.lm_head.weight.device
    row = _as_rows([prompt], device)[0]
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    logits, cache = prefill(model, [row])
    cache = cache.select(torch.zeros(num_beams, dtype=torch.long, device=device))
    scores = torch.full((num_beams,), float("-inf"), device=device)
    scores[0] = 0.0  # all beams start identical: only one may expand at the first step
    beams: List[List[int]] = [[] for _ in range(num_beams)]
    logits = logits.expand(num_beams, -1)
    done: List[tuple] = []
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float(), -1) + scores[:, None]
        top, flat = logp.flatten().topk(2 * num_beams)
        vocab = logp.shape[-1]
        keep_rows, keep_tokens, keep_scores = [], [], []
        for value, index in zip(top.tolist(), flat.tolist()):
            origin, token = divmod(index, vocab)
            if value == float("-inf"):
                break
            if token in eos:
                done.append((value / max(1, len(beams[origin]) + 1) ** length_penalty, beams[origin]))
            else:
                keep_rows.append(origin)
                keep_tokens.append(token)
                keep_scores.append(value)
            if len(keep_rows) == num_beams:
                break
        beams = [beams[o] + [t] for o, t in zip(keep_rows, keep_tokens)]
        if step == max_new_tokens - 1:  # out of budget: the live beams compete as they are
            done += [(v / len(b) ** length_penalty, b) for v, b in zip(keep_scores, beams)]
        if len(done) >= num_beams or not keep_rows or step == max_new_tokens - 1:
            break
        scores = torch.tensor(keep_scores, device=device)
        cache = cache.select(torch.tensor(keep_rows, device=device))
        logits = model(torch.tensor(keep_tokens, device=device)[:, None], cache=cache).logits[:, -1]
    if not done:
        return []
    return max(done, key=lambda d: d[0])[1]


__all__ = ["generate", "prefill", "beam_search"]
