"""Evaluation: task metrics (metrics.py) and generation-based evaluation with greedy and beam search
(generation.py)."""
from .generation import evaluate_generation, generate_ids, generate_texts
from .metrics import (
    METRICS, accuracy, bleu, exact_match, execution_accuracy, f1, matthews, rouge, rouge_pair, run_query, score,
)

__all__ = ["evaluate_generation", "generate_ids", "generate_texts", "METRICS", "accuracy", "bleu", "exact_match",
           "execution_accuracy", "f1", "matthews", "rouge", "rouge_pair", "run_query", "score"]
