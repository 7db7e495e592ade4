"""Few-shot adaptation (Transformer²'s third strategy): mixture weights α over K experts, searched by the Rust
CEM on a handful of labelled examples, every generation's whole population scored in batched forwards.

    data = FewShotSet.from_records(records, tokenizer)             # {"input": …, "output": …} each
    result = few_shot_adapt(peft, ["sst2", "cola", "rte"], data)   # CEM, population 32, 50 generations
    result.alpha, result.before, result.after, result.seconds
    result.add_to(peft, "mix")                                     # the mixture as an adapter

Why it is fast: a candidate mixture changes only adapter tensors, and every mixable adapter is linear in
them, so row b of one forward can carry candidate p(b)'s mixture (`PeftModel.row_adapters`): P candidates ×
E examples are P·E rows of one batch, never P weight rebuilds. What a mixture cannot change is computed
once and kept across generations: the tokenized, right-padded examples (cut after their last label), their
embeddings repeated for a whole population, the positions and ids of the label tokens, the SVD factors
(SVF layers hold them). The LM head runs only at label positions (the vocabulary projection over every
position would dominate a small model's time).

Fitness, per candidate, over the E examples: "accuracy" = number of examples whose every label token is the
model's argmax (exactly: greedy decoding reproduces the label and its eos), plus the geometric-mean label
token probability in (0, 1) as the tie-break — so accuracy ranks first and log-likelihood breaks ties;
"loss" = the mean label-token log-likelihood (negative cross-entropy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..models.base import wide
from ..peft import PeftModel
from .cem import CEM
from .mixing import add_weighted_adapter, mixing_groups, mixture_weights, recomposed

__all__ = ["FewShotError", "FewShotSet", "PopulationEvaluator", "AdaptResult", "few_shot_adapt", "DEFAULT_TEMPLATE",
           "PRECISIONS", "use_precision"]

#: the State-offset reference's data format: `input + "###"` → `output + eos`, loss on the output only
DEFAULT_TEMPLATE = {"prompt": "{input}###", "target": "{output}", "eos": True}
OBJECTIVES = ("accuracy", "loss")


#: how a population is scored: "fp32" strict, "tf32" TF32 matmuls over fp32 weights, "bf16" a bf16 model
PRECISIONS = ("fp32", "tf32", "bf16")


def use_precision(precision: str) -> torch.dtype:
    """Sets torch's matmul precision for `precision` (TF32 on or off, globally) and returns the dtype the model
    should have. TF32 is what makes a GPU's batched population forward fast (benches/results/adapt-h100.md: ~11x
    recomposing per candidate, fitness equal to 1e-8); strict fp32 leaves it compute-bound at ~6x."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: got {precision!r}, expected one of {list(PRECISIONS)}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


class FewShotError(ValueError):
    """Few-shot examples that cannot be used (no label, nothing to score); the message names the example."""


@dataclass
class FewShotSet:
    """E examples, right-padded (exact for a causal model: later tokens never reach earlier ones)."""

    input_ids: torch.Tensor  # (E, L) int64
    labels: torch.Tensor     # (E, L) int64, -100 except on the label tokens (and their eos)

    def __post_init__(self) -> None:
        if self.input_ids.shape != self.labels.shape or self.input_ids.dim() != 2:
            raise FewShotError(f"input_ids {tuple(self.input_ids.shape)} and labels {tuple(self.labels.shape)}: "
                               "expected two (E, L) tensors")
        missing = [i for i in range(len(self)) if not bool((self.labels[i, 1:] != -100).any())]
        if missing:
            raise FewShotError(f"few-shot example(s) {missing} have no label tokens: each example needs a label "
                               "(the target the model should produce after its prompt)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_ids(cls, pairs: Sequence[tuple], pad_id: int = 0, eos_id: Optional[int] = None) -> "FewShotSet":
        """From (prompt ids, label ids) pairs; `eos_id` is appended to each label when given."""
        rows = []
        for i, (prompt, target) in enumerate(pairs):
            target = list(target) + ([] if eos_id is None else [eos_id])
            if not len(prompt) or not len(target) or (eos_id is not None and len(target) == 1):
                raise FewShotError(f"few-shot example {i}: {'empty prompt' if not len(prompt) else 'no label'}")
            rows.append((list(prompt), target))
        width = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, t) in enumerate(rows):
            ids[i, : len(p) + len(t)] = torch.tensor(p + t)
            labels[i, len(p): len(p) + len(t)] = torch.tensor(t)
        return cls(ids, labels)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], tokenizer, template: Optional[Mapping] = None,
                     max_length: Optional[int] = None) -> "FewShotSet":
        """From records ({"input": …, "output": …} with the default template) through the Rust tokenizer
        (`ssm_offset.data.Tokenizer` or the path of a tokenizer.json)."""
        from ..data import Template, Tokenizer

        records = list(records)
        if not records:
            raise FewShotError("no few-shot examples given")
        t = Template(template or DEFAULT_TEMPLATE)
        target_fields = [f for f in Template({"prompt": "", "target": t.spec["target"]}).fields]
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise FewShotError(f"few-shot example {i}: expected an object, got {type(r).__name__}")
            absent = [f for f in t.fields if f not in r]
            empty = [f for f in target_fields if f in r and r[f] in (None, "")]
            if absent or empty:
                raise FewShotError(f"few-shot example {i} has no label: field(s) {absent + empty} "
                                   f"{'missing' if absent else 'empty'} (template {t.spec})")
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
        arrays, _ = tok.encode_pairs(records, t, max_length=max_length, truncation="truncate_prompt", padded=True)
        return cls(torch.from_numpy(arrays["input_ids"].astype(np.int64)),
                   torch.from_numpy(arrays["labels"].astype(np.int64)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PopulationEvaluator:
    """Scores candidate mixtures (rows of a (P, G·K) array) on a FewShotSet: batched per-row adapters
    (`evaluate`), or one weight rebuild and forward per candidate, the reference way (`evaluate_sequential`).
    `profile` accumulates seconds per phase."""

    def __init__(self, model: PeftModel, experts: Sequence[str], data: FewShotSet, granularity: str = "expert",
                 objective: str = "accuracy", max_rows: Optional[int] = None):
        """`max_rows`: most batch rows (candidates × examples) per forward (default: all on a GPU, 64 on CPU)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: got {objective!r}, expected one of {list(OBJECTIVES)}")
        if not isinstance(model, PeftModel):
            raise TypeError("few-shot adaptation needs a PeftModel holding the experts (see load_experts)")
        self.model, self.experts, self.objective = model, list(experts), objective
        self.groups = mixing_groups(model, self.experts, granularity)
        self.granularity = granularity
        self.dim = len(self.groups) * len(self.experts)
        lm = model.base_model
        self.device = lm.lm_head.weight.device
        labels = data.labels[:, 1:]
        mask = labels != -100
        length = int(mask.nonzero()[:, 1].max()) + 1  # logits at t predict labels[t + 1]; nothing after matters
        self.ids = data.input_ids[:, :length].to(self.device)
        self.pos_ex, self.pos_t = (p.to(self.device) for p in mask[:, :length].nonzero(as_tuple=True))
        self.targets = labels[:, :length][mask[:, :length]].to(self.device)
        self.n_examples = len(data)
        self.n_tokens = mask.sum(1).to(self.device, torch.float64)
        # a GPU takes the whole population in one forward; the CPU reference scan costs the same per row at
        # any batch and slows down once a batch leaves the cache, so CPU forwards take ~64 rows
        self.max_rows = max_rows or (1 << 30 if self.device.type == "cuda" else 64)
        self.per_chunk = max(1, self.max_rows // self.n_examples)  # candidates per forward
        with torch.no_grad():
            self._emb = lm.backbone.embeddings(self.ids)  # (E, L, H): mixture-independent
        self._emb_rep: Optional[torch.Tensor] = None
        self.profile: Dict[str, float] = {}
        self.forwards = 0

    def _tick(self, key: str, t0: float) -> float:
        _sync(self.device)
        t = time.perf_counter()
        self.profile[key] = self.profile.get(key, 0.0) + t - t0
        return t

    def _embeddings(self, candidates: int) -> torch.Tensor:
        if self._emb_rep is None or self._emb_rep.shape[0] < candidates * self.n_examples:
            self._emb_rep = self._emb.repeat(min(self.per_chunk, max(candidates, 1)), 1, 1)
        return self._emb_rep[: candidates * self.n_examples]

    def _score(self, hidden: torch.Tensor, candidates: int) -> torch.Tensor:
        """(candidates, 2): correct examples and summed label-token log-likelihood per candidate. The head runs
        on label positions only, in slices of ~16 MB of logits: log p(target) = logit[target] − logsumexp,
        never a full log-softmax over (candidates, tokens, vocabulary)."""
        lm = self.model.base_model
        h = hidden.view(candidates, self.n_examples, *hidden.shape[1:])[:, self.pos_ex, self.pos_t]  # (C, T, H)
        h = h.reshape(-1, h.shape[-1])
        targets = self.targets.repeat(candidates)
        step = max(1, (1 << 22) // lm.lm_head.out_features)
        ll, ok = [], []
        for i in range(0, h.shape[0], step):
            logits = wide(lm.lm_head(h[i: i + step].to(lm.lm_head.weight.dtype)))
            t = targets[i: i + step, None]
            ll.append((logits.gather(-1, t)[:, 0] - torch.logsumexp(logits, -1)).double())
            ok.append(logits.argmax(-1) == t[:, 0])
        tok_ll = torch.cat(ll).view(candidates, -1)
        tok_ok = torch.cat(ok).view(candidates, -1).double()
        wrong = torch.zeros(candidates, self.n_examples, dtype=torch.float64, device=self.device)
        wrong.index_add_(1, self.pos_ex, 1.0 - tok_ok)
        return torch.stack([(wrong == 0).sum(1).double(), tok_ll.sum(1)], 1)

    def _fitness(self, stats: torch.Tensor) -> Dict[str, np.ndarray]:
        stats = stats.cpu().numpy()
        mean_ll = stats[:, 1] / float(self.n_tokens.sum())
        correct = stats[:, 0]
        fitness = correct + np.exp(mean_ll) if self.objective == "accuracy" else mean_ll
        return {"fitness": fitness, "accuracy": correct / self.n_examples, "loglik": mean_ll}

    def _hidden(self, emb: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.model.base_model.backbone(emb)

    @torch.no_grad()
    def evaluate(self, alphas: Union[np.ndarray, torch.Tensor]) -> Dict[str, np.ndarray]:
        """Every candidate at once: row (p, e) of a batch runs example e under candidate p's mixture."""
        a = torch.as_tensor(alphas, dtype=torch.float32).to(self.device)
        if a.dim() != 2 or a.shape[1] != self.dim:
            raise ValueError(f"alphas: got shape {tuple(a.shape)}, expected (P, {self.dim})")
        out = []
        for start in range(0, a.shape[0], self.per_chunk):
            t0 = time.perf_counter()
            chunk = a[start: start + self.per_chunk]
            c = chunk.shape[0]
            weights = mixture_weights(chunk, self.groups, repeat=self.n_examples)
            emb = self._embeddings(c)
            t0 = self._tick("mixture weights", t0)
            with self.model.row_adapters(self.experts, weights):
                hidden = self._hidden(emb)
            t0 = self._tick("forward (backbone)", t0)
            out.append(self._score(hidden, c))
            self._tick("LM head at label positions + metric", t0)
        return self._fitness(torch.cat(out))

    @torch.no_grad()
    def evaluate_sequential(self, alphas: Union[np.ndarray, torch.Tensor]) -> Dict[str, np.ndarray]:
        """The reference way: per candidate, rebuild the mixed weights (same SVD factors, same tokenized
        examples), then one forward over the E examples."""
        a = torch.as_tensor(alphas, dtype=torch.float64)
        out = []
        with recomposed(self.model, self.experts, self.granularity) as apply:
            for row in a:
                t0 = time.perf_counter()
                apply(row.view(len(self.groups), len(self.experts)))
                t0 = self._tick("recompose weights", t0)
                hidden = self._hidden(self._emb)
                t0 = self._tick("forward (backbone)", t0)
                out.append(self._score(hidden, 1))
                self._tick("LM head at label positions + metric", t0)
        return self._fitness(torch.cat(out))

    @torch.no_grad()
    def evaluate_base(self) -> Dict[str, np.ndarray]:
        """The base model (every adapter off), scored the same way."""
        with self.model.disable_adapter():
            return self._fitness(self._score(self._hidden(self._emb), 1))

    def one_hot(self, k: int) -> np.ndarray:
        """The candidate that is expert k alone (every group)."""
        a = np.zeros((len(self.groups), len(self.experts)))
        a[:, k] = 1.0
        return a.reshape(1, -1)


@dataclass
class AdaptResult:
    experts: List[str]
    granularity: str
    groups: List[List[str]]
    alpha: np.ndarray                 # (G, K)
    fitness: float
    before: Dict[str, float]          # the base model: accuracy, loglik
    after: Dict[str, float]           # the chosen mixture
    experts_alone: Dict[str, Dict[str, float]]
    history: List[float]              # best fitness after each generation
    seconds: float
    profile: Dict[str, float] = field(default_factory=dict)

    def add_to(self, model: PeftModel, adapter_name: str = "few_shot_mix") -> None:
        """The chosen mixture as a new (active) adapter of `model`."""
        add_weighted_adapter(model, self.experts, self.alpha, adapter_name, self.granularity)

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["alpha"] = self.alpha.tolist()
        return d


def _row(r: Dict[str, np.ndarray], i: int = 0) -> Dict[str, float]:
    return {k: float(v[i]) for k, v in r.items()}


def few_shot_adapt(
    model: PeftModel,
    experts: Sequence[str],
    data: FewShotSet,
    *,
    granularity: str = "expert",
    objective: str = "accuracy",
    population: int = 32,
    iterations: int = 50,
    elite_fraction: float = 0.2,
    mean: Optional[float] = None,
    std: float = 0.5,
    bounds: Optional[tuple] = (0.0, 1.0),
    seed: int = 0,
    max_rows: Optional[int] = None,
    evaluator: Optional[PopulationEvaluator] = None,
    callback: Optional[Callable[[int, float], None]] = None,
) -> AdaptResult:
    """CEM over α (the paper's settings by default: population 32, 20 % elites, mean 1/K, std 0.5, α in [0, 1];
    the paper runs up to 100 generations). Returns the best mixture found, with the base model's and each
    expert's scores on the same examples for comparison."""
    start = time.perf_counter()
    ev = evaluator or PopulationEvaluator(model, experts, data, granularity, objective, max_rows)
    k = len(ev.experts)
    cem = CEM(dim=ev.dim, population=population, elite_fraction=elite_fraction,
              mean=1.0 / k if mean is None else mean, std=std, bounds=bounds, seed=seed)
    history = []
    for it in range(iterations):
        t0 = time.perf_counter()
        pop = cem.ask()
        t0 = ev._tick("CEM ask/tell (Rust)", t0)
        scores = ev.evaluate(pop)["fitness"]
        t0 = time.perf_counter()
        cem.tell(scores)
        ev._tick("CEM ask/tell (Rust)", t0)
        history.append(float(cem.best[1]))
        if callback is not None:
            callback(it, history[-1])
    alpha, fitness = cem.best
    # one batch scores the chosen mixture and every expert alone (one-hot) for the report
    table = np.concatenate([np.asarray(alpha).reshape(1, -1)] + [ev.one_hot(i) for i in range(k)])
    scored = ev.evaluate(table)
    return AdaptResult(
        experts=ev.experts, granularity=ev.granularity, groups=ev.groups,
        alpha=np.asarray(alpha).reshape(len(ev.groups), k), fitness=float(fitness),
        before=_row(ev.evaluate_base()), after=_row(scored),
        experts_alone={n: _row(scored, i + 1) for i, n in enumerate(ev.experts)},
        history=history, seconds=time.perf_counter() - start, profile=dict(ev.profile),
    )
