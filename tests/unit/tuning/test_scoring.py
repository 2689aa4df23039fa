"""Scores of generated answers: normalization, labels, macro-F1 by hand, ROUGE-L, BLEU and chrF bounds."""

from __future__ import annotations

import pytest

from atelier.tuning.scoring import classify, infer_labels, macro_f1, normalize, score


def test_answers_are_normalized_and_mapped_to_labels():
    assert normalize("  Sport.\n") == "sport" and normalize("New  York!") == "new york"
    labels = ["sport", "tech", "business"]
    assert classify("Sport.", labels) == "sport"
    assert classify("tech, because of the phones", labels) == "tech"
    assert classify("technology", labels) is None  # a label must end at a word boundary
    assert classify("I think politics", labels) is None
    assert infer_labels(["yes", "No", "yes"]) == ["no", "yes"]
    assert infer_labels(["a long answer with many words in it", "yes"]) is None


def test_macro_f1_by_hand():
    predicted = ["a", "a", "b", None]
    actual = ["a", "b", "b", "b"]
    # a: TP 1, FP 1, FN 0 -> 2/3; b: TP 1, FP 0, FN 2 -> 2/4
    assert macro_f1(predicted, actual, ["a", "b"]) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_scores_of_perfect_and_wrong_answers():
    refs = ["the cat sat on the mat", "a dog barked loudly at night"]
    perfect = score(refs, refs, ["exact_match", "rouge_l", "bleu", "chrf"])
    assert perfect["exact_match"] == 1 and perfect["rouge_l"] == pytest.approx(1)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    wrong = score(["zzz", "qqq"], refs, ["exact_match", "rouge_l", "bleu", "chrf"])
    assert wrong["exact_match"] == 0 and wrong["rouge_l"] == 0 and wrong["bleu"] < 1 and wrong["chrf"] < 10
    assert "accuracy" not in score(["x", "y"], refs, ["accuracy"])  # no label set: left out
    labelled = score(["Yes.", "no way", "maybe"], ["yes", "no", "no"], ["accuracy", "macro_f1"])
    assert labelled["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score(["a"], ["a", "b"], ["exact_match"])
