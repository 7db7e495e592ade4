"""Two-pass inference (Transformer²): pass one decides which expert (or mixture) fits the request, pass two
answers with it.

    sam = SelfAdaptiveModel(peft, {"sentiment": "sst2", "grammar": "cola"}, encode=tok.encode)
    sam.generate(["Is this sentence grammatical? …"], max_new_tokens=8)           # strategy "prompt"
    sam = SelfAdaptiveModel(peft, experts, strategy="classifier", classifier="router", encode=tok.encode)
    sam = SelfAdaptiveModel(peft, experts, strategy="few-shot"); sam.adapt(few_shot_set)

Strategies:
- "prompt": the base model (every adapter off) completes `prompt` — which names the categories and asks for
  one of them or "others" — and the first category named in its answer picks the expert; "others" or no
  category picks the base weights. Answers are matched on token ids (each category's ids, with and without
  a leading space), so no detokenizer is needed. `dispatcher` names an adapter that answers the prompt in
  place of the base weights: a tiny base cannot follow the prompt, so the mechanism is tested with an
  adapter fine-tuned to answer it (`classifier_data` with "others" requests, then `train_expert`).
- "classifier": an expert trained on (prompt(request) → category) pairs (`classifier_data`, then
  `train_expert`) scores every category's tokens, "others" included, and the highest mean log-likelihood
  per token wins (constrained decoding of the category names).
- "few-shot": one mixture for the whole task, found by CEM on labelled examples (`adapt`), answers every
  request.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..peft import PeftModel
from .fewshot import AdaptResult, FewShotSet, few_shot_adapt

__all__ = ["SelfAdaptiveModel", "DEFAULT_PROMPT", "OTHERS", "STRATEGIES", "classifier_data"]

OTHERS = "others"
STRATEGIES = ("prompt", "classifier", "few-shot")
# The paper's adaptation prompt (Transformer², appendix), with the categories filled in.
DEFAULT_PROMPT = (
    "Analyze the given question and classify it into one of {n} categories: {categories}, or '" + OTHERS + "'. "
    "Return only the category name.\nQuestion: {request}\nCategory:"
)

Request = Union[str, Sequence[int]]


def _find(seq: List[int], sub: List[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i: i + len(sub)] == sub:
            return i
    return -1


def classifier_data(requests: Mapping[str, Sequence[str]], encode: Callable[[str], List[int]],
                    prompt: str = DEFAULT_PROMPT, eos_id: Optional[int] = None, pad_id: int = 0) -> FewShotSet:
    """(prompt(request) → " category") examples for training a classification expert: `requests` maps each
    category (and, optionally, "others") to example requests."""
    cats = [c for c in requests if c != OTHERS]
    pairs = []
    for cat, reqs in requests.items():
        for r in reqs:
            text = prompt.format(n=len(cats) + 1, categories=", ".join(cats), request=r)
            pairs.append((encode(text), encode(" " + cat)))
    return FewShotSet.from_ids(pairs, pad_id=pad_id, eos_id=eos_id)


class SelfAdaptiveModel:
    """A PeftModel holding experts, and the rule that picks one per request. `experts` maps a category name
    (what the dispatcher says) to an expert adapter; a list uses the expert names as categories."""

    def __init__(self, model: PeftModel, experts: Union[Mapping[str, str], Sequence[str]], strategy: str = "prompt",
                 *, encode: Optional[Callable[[str], List[int]]] = None, prompt: str = DEFAULT_PROMPT,
                 classifier: Optional[str] = None, dispatcher: Optional[str] = None, dispatch_tokens: int = 8,
                 classify_rows: Optional[int] = None):
        """`dispatcher`: the adapter that answers the classification prompt for strategy "prompt" (default: the
        base weights). `classify_rows`: most (request, category) rows per classifier forward (default: all on a
        GPU, 256 on CPU)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: got {strategy!r}, expected one of {list(STRATEGIES)}")
        if not isinstance(model, PeftModel):
            raise TypeError("SelfAdaptiveModel needs a PeftModel holding the experts (see load_experts)")
        self.model = model
        self.experts: Dict[str, str] = dict(experts) if isinstance(experts, Mapping) else {e: e for e in experts}
        if not self.experts:
            raise ValueError("no experts given")
        if OTHERS in self.experts:
            raise ValueError(f"{OTHERS!r} is reserved: it stands for the base model")
        for name in self.experts.values():
            model._check_name(name)
        if strategy == "classifier":
            if classifier is None:
                raise ValueError("strategy 'classifier' needs `classifier`, the adapter trained to name categories")
            model._check_name(classifier)
        if dispatcher is not None:
            model._check_name(dispatcher)
        self.dispatcher = dispatcher
        self.strategy, self.encode, self.prompt = strategy, encode, prompt
        self.classifier, self.dispatch_tokens = classifier, dispatch_tokens
        on_gpu = model.base_model.lm_head.weight.device.type == "cuda"
        self.classify_rows = classify_rows if classify_rows is not None else (None if on_gpu else 256)
        self.mixture: Optional[AdaptResult] = None
        self.mixture_adapter = "few_shot_mix"

    # -- pass one -------------------------------------------------------------------------------------------
    def _ids(self, request: Request) -> List[int]:
        if isinstance(request, str):
            if self.encode is None:
                raise ValueError("text requests need `encode` (e.g. ssm_offset.data.Tokenizer(...).encode)")
            return self.encode(request)
        return list(request)

    def dispatch_text(self, request: str) -> str:
        """Pass one's input: the classification prompt around the request."""
        if not isinstance(request, str):
            raise ValueError("prompt-based and classifier dispatch need text requests")
        cats = list(self.experts)
        return self.prompt.format(n=len(cats) + 1, categories=", ".join(cats), request=request)

    def dispatch_prompt(self, request: str) -> List[int]:
        if self.encode is None:
            raise ValueError("the dispatch prompt is text: pass `encode`")
        return self.encode(self.dispatch_text(request))

    def _category_ids(self) -> Dict[str, List[List[int]]]:
        return {c: [self.encode(c), self.encode(" " + c)] for c in [*self.experts, OTHERS]}

    def parse(self, answer: Sequence[int]) -> Optional[str]:
        """The category named first in an answer's ids (None: "others" or none named → base weights)."""
        answer = list(answer)
        best, where = None, len(answer) + 1
        for cat, forms in self._category_ids().items():
            for ids in forms:
                i = _find(answer, ids) if ids else -1
                if 0 <= i < where:
                    best, where = cat, i
        return None if best in (None, OTHERS) else best

    @torch.no_grad()
    def choose(self, requests: Sequence[Request]) -> List[Optional[str]]:
        """Pass one: the category (a key of `experts`) for each request, or None for the base weights. Few-shot
        gives every request the CEM mixture ("few-shot")."""
        if self.strategy == "few-shot":
            if self.mixture is None:
                raise ValueError("strategy 'few-shot': call adapt(examples) first")
            return ["few-shot"] * len(requests)
        prompts = [self.dispatch_prompt(r) for r in requests]
        if self.strategy == "prompt":
            with (self.model.disable_adapter() if self.dispatcher is None
                  else self.model.using_adapter(self.dispatcher)):
                answers = self.model.generate(prompts, self.dispatch_tokens, eos_token_id=[])
            return [self.parse(a) for a in answers.tolist()]
        return self._classify(prompts)

    def _classify(self, prompts: List[List[int]]) -> List[Optional[str]]:
        """Constrained decoding: mean log-likelihood per token of each category's ids (leading-space form) after
        the prompt. Per token, not summed: a sum favours the category with the fewest tokens (a one-token
        "others" beat every 2–3-token task name on the real-task run, benches/results/adapt-tasks-cpu.md)."""
        cats = [*self.experts, OTHERS]
        forms = [self.encode(" " + c) for c in cats]
        pairs = [(p, f) for p in prompts for f in forms]
        data = FewShotSet.from_ids(pairs)
        device = self.model.base_model.lm_head.weight.device
        # chunks of rows: (prompts × categories) rows of full-vocabulary logits at once take gigabytes on CPU
        chunk = self.classify_rows or len(data)
        parts = []
        with self.model.using_adapter(self.classifier):
            for i in range(0, len(data), chunk):
                logits = self.model(data.input_ids[i: i + chunk].to(device)).logits[:, :-1]
                labels = data.labels[i: i + chunk, 1:].to(device)
                ll = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
                mask = labels != -100
                parts.append((ll * mask).sum(1) / mask.sum(1).clamp(min=1))
                del logits, ll
        scores = torch.cat(parts).view(len(prompts), len(cats))
        picks = scores.argmax(1).tolist()
        return [None if cats[i] == OTHERS else cats[i] for i in picks]

    # -- few-shot ---------------------------------------------------------------------------------------------
    def adapt(self, examples: FewShotSet, experts: Optional[Sequence[str]] = None, **cem) -> AdaptResult:
        """Find the CEM mixture of `experts` (default: all) on labelled `examples`; later requests use it."""
        names = list(experts or self.experts.values())
        result = few_shot_adapt(self.model, names, examples, **cem)
        active = self.model.active_adapter
        if self.mixture_adapter in self.model.peft_config:
            self.model.delete_adapter(self.mixture_adapter)
        result.add_to(self.model, self.mixture_adapter)
        if active in self.model.peft_config:
            self.model.set_adapter(active)
        self.mixture = result
        return result

    # -- pass two ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: Sequence[Request], max_new_tokens: int, return_choices: bool = False, **kwargs):
        """Pass one, then pass two: each request answered by its expert (the base model for None), requests
        that share an expert in one batch. Returns a list of id lists (and the choices)."""
        choices = self.choose(requests)
        out: List[Optional[List[int]]] = [None] * len(requests)
        for choice in dict.fromkeys(choices):
            idx = [i for i, c in enumerate(choices) if c == choice]
            ids = [self._ids(requests[i]) for i in idx]
            with (self.model.disable_adapter() if choice is None else self.model.using_adapter(
                    self.mixture_adapter if choice == "few-shot" else self.experts[choice])):
                gen = self.model.generate(ids, max_new_tokens, **kwargs)
            for i, row in zip(idx, gen.tolist()):
                out[i] = row
        return (out, choices) if return_choices else out
