"""ranking_auc against the pairwise definition of the ROC AUC, ties included."""

import numpy as np
import pytest

from gld_jax.metrics import correct_mask, ranking_auc


def pairwise_auc(conf, correct):
    pos, neg = conf[correct], conf[~correct]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    conf = np.round(rng.uniform(size=200), 1)  # many ties
    correct = rng.uniform(size=200) < conf  # confident rows are right more often
    assert ranking_auc(conf, correct) == pytest.approx(pairwise_auc(conf, correct), abs=1e-12)
    assert ranking_auc(conf, correct) > 0.6


def test_auc_extremes_and_empty_groups():
    assert ranking_auc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert ranking_auc(np.array([0.1, 0.8, 0.9]), np.array([True, False, False])) == 0.0
    assert ranking_auc(np.ones(4), np.array([True, False, True, False])) == 0.5
    assert np.isnan(ranking_auc(np.ones(3), np.zeros(3, bool)))


def test_correct_mask_reads_the_solution():
    sol = {"a": {1}, "b": set(), "c": {2, 3}}
    got = correct_mask(["a", "b", "c", "d"], np.array([1, 1, 3, 1]), sol)
    assert got.tolist() == [True, False, True, False]
