"""Scores of generated answers against references: exact match, label accuracy and macro-F1, ROUGE-L, BLEU, chrF.

Pure functions over strings (no model, no storage). Classification-like answers are mapped
to a label of the label set (given, or inferred from the references when they are few and
short): the label the normalized answer equals, else the longest label it starts with (a
model that answers "Sport." or "sport, because..." answered ``sport``), else none (counted
wrong). ROUGE-L is Google's ``rouge-score`` (F-measure, stemmed, 0-1); BLEU and chrF are
``sacrebleu``'s corpus scores (0-100); all offline.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

LIKELIHOOD_METRICS = ("loss", "perplexity", "token_accuracy")
"""From the model's probabilities of the reference answers (no generation)."""
GENERATION_METRICS = ("exact_match", "accuracy", "macro_f1", "rouge_l", "bleu", "chrf")
"""From the generated answers."""
METRICS = LIKELIHOOD_METRICS + GENERATION_METRICS
MAX_INFERRED_LABELS = 50
"""References define a label set only when there are at most this many distinct ones..."""
MAX_LABEL_WORDS = 4
"""...each of at most this many words."""

_SPACE = re.compile(r"\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def normalize(text: str) -> str:
    """Lower case, single spaces, no punctuation at either end: ``" Sport. "`` → ``"sport"``."""
    return _EDGE.sub("", _SPACE.sub(" ", text.strip().lower()))


def infer_labels(references: Sequence[str]) -> list[str] | None:
    """The references' distinct normalized values when they look like labels (few and short), else None."""
    labels = sorted({normalize(r) for r in references})
    if len(labels) > MAX_INFERRED_LABELS or any(not label or len(label.split()) > MAX_LABEL_WORDS for label in labels):
        return None
    return labels


def classify(answer: str, labels: Sequence[str]) -> str | None:
    """The label an answer gives: equal after normalization, else the longest one it starts with, else None."""
    text = normalize(answer)
    by_length = sorted((normalize(label) for label in labels), key=len, reverse=True)
    if text in by_length:
        return text
    return next((label for label in by_length if label and re.match(rf"{re.escape(label)}\b", text)), None)


def macro_f1(predicted: Sequence[str | None], actual: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over the labels of F1 = 2·TP / (2·TP + FP + FN); a label with no TP, FP or FN scores 1."""
    scores = []
    for label in labels:
        tp = sum(p == label and a == label for p, a in zip(predicted, actual))
        fp = sum(p == label and a != label for p, a in zip(predicted, actual))
        fn = sum(p != label and a == label for p, a in zip(predicted, actual))
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return statistics.fmean(scores) if scores else float("nan")


def score(predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str],
          labels: Sequence[str] | None = None) -> dict[str, float]:
    """The generation metrics among ``metrics`` of ``predictions`` against ``references`` (same length).

    ``accuracy`` and ``macro_f1`` need a label set: ``labels``, else inferred from the
    references (``infer_labels``); without one they are left out of the result.
    """
    if len(predictions) != len(references) or not references:
        raise ValueError("predictions and references must be non-empty and of the same length")
    out: dict[str, float] = {}
    if "exact_match" in metrics:
        out["exact_match"] = statistics.fmean(normalize(p) == normalize(r) for p, r in zip(predictions, references))
    label_set = [normalize(label) for label in labels] if labels else infer_labels(references)
    if label_set and {"accuracy", "macro_f1"} & set(metrics):
        predicted = [classify(p, label_set) for p in predictions]
        actual = [normalize(r) for r in references]
        if "accuracy" in metrics:
            out["accuracy"] = statistics.fmean(p == a for p, a in zip(predicted, actual))
        if "macro_f1" in metrics:
            out["macro_f1"] = macro_f1(predicted, actual, label_set)
    if "rouge_l" in metrics:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        out["rouge_l"] = statistics.fmean(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))
    if "bleu" in metrics or "chrf" in metrics:
        import sacrebleu

        if "bleu" in metrics:
            out["bleu"] = float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
        if "chrf" in metrics:
            out["chrf"] = float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)
    return out
