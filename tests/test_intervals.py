"""Paired-bootstrap intervals between methods: hand-computed cases, pooling over seeds, the verdict words."""

from __future__ import annotations

import pytest

from radargate.experiment.report.intervals import paired_contrast, paired_difference, per_example


def evaluation(metric: str, values: list[float]) -> dict:
    """An evaluation result as ``evaluate_examples`` writes it, one example per value."""
    return {"examples": [{"task": "t", "id": str(i), metric: value} for i, value in enumerate(values)]}


def test_percentile_interval_of_a_hand_computed_case():
    # differences [0, 0, 3]: a resample's mean is k with P(k=0) = 8/27, P(3) = 1/27, so the 2.5% and
    # 97.5% quantiles of the bootstrap distribution are 0 and 3
    difference = paired_difference([evaluation("acc", [1, 1, 1])], [evaluation("acc", [1, 1, 0])], "acc")
    assert (difference.mean, difference.n) == (pytest.approx(1 / 3), 3)
    difference = paired_difference([evaluation("answer_nll", [2.0, 1.0, 4.0])],
                                   [evaluation("answer_nll", [2.0, 1.0, 1.0])], "answer_nll")
    assert (difference.mean, difference.low, difference.high) == (1.0, 0.0, 3.0)
    assert difference.verdict == "no detectable difference"  # the interval touches zero


def test_two_examples_give_the_full_range():
    # differences [0, 1]: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    difference = paired_difference([evaluation("acc", [1, 1])], [evaluation("acc", [1, 0])], "acc")
    assert (difference.low, difference.high) == (0.0, 1.0)


def test_words_follow_the_interval_and_the_metrics_direction():
    better_acc = paired_difference([evaluation("acc", [1] * 40)], [evaluation("acc", [0] * 30 + [1] * 10)], "acc")
    assert better_acc.low > 0 and better_acc.verdict == "better"
    lower_nll = paired_difference([evaluation("answer_nll", [1.0] * 20 + [1.5] * 20)],
                                  [evaluation("answer_nll", [2.0] * 40)], "answer_nll")
    assert lower_nll.high < 0 and lower_nll.verdict == "better"  # a lower NLL is the better fit
    assert paired_difference([evaluation("answer_nll", [2.0] * 5)], [evaluation("answer_nll", [1.0] * 5)],
                             "answer_nll").verdict == "worse"


def test_seeds_are_pooled_per_example_before_pairing():
    seeds = [evaluation("acc", [1, 0]), evaluation("acc", [0, 0])]
    assert per_example(seeds, "acc") == {("t", "0"): 0.5, ("t", "1"): 0.0}
    difference = paired_difference(seeds, [evaluation("acc", [0, 0])], "acc")
    assert difference.mean == 0.25 and difference.n == 2


def test_different_examples_cannot_be_paired():
    with pytest.raises(ValueError, match="different examples"):
        paired_difference([evaluation("acc", [1, 0])], [evaluation("acc", [1])], "acc")
    with pytest.raises(ValueError, match="metric='loss' is unknown"):
        paired_difference([evaluation("acc", [1])], [evaluation("acc", [1])], "loss")


def test_a_contrast_of_four_methods_is_the_difference_of_two_margins_per_example():
    # margin of a over b at large n: [1, 0, 2]; at small n: [1, 0, -1]; growth per example [0, 0, 3],
    # the hand-computed case above: mean 1, interval [0, 3]
    a_large, b_large = evaluation("answer_nll", [3.0, 1.0, 4.0]), evaluation("answer_nll", [2.0, 1.0, 2.0])
    a_small, b_small = evaluation("answer_nll", [2.0, 5.0, 1.0]), evaluation("answer_nll", [1.0, 5.0, 2.0])
    growth = paired_contrast([(1.0, [a_large]), (-1.0, [b_large]), (-1.0, [a_small]), (1.0, [b_small])],
                             "answer_nll")
    assert (growth.mean, growth.low, growth.high, growth.n) == (1.0, 0.0, 3.0, 3)
    assert paired_contrast([(1.0, [a_large]), (-1.0, [b_large])], "answer_nll") == paired_difference(
        [a_large], [b_large], "answer_nll")
