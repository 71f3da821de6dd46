"""Ensembles of embedding sets and non-landmark re-ranking, on hand-computed vectors."""

import numpy as np
import pytest

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.ensemble import combine_embedding_sets, l2_normalize, model_means
from gld_jax.retrieval.index import build_scann_index
from gld_jax.retrieval.rerank import nonlandmark_similarity, predict_nonlandmark_rerank


def _set(ids, emb, labels):
    return EmbeddingSet(np.array(ids), np.asarray(emb, np.float32), np.array(labels, np.int64))


# ----------------------------------------------------------------------------- ensemble


def test_combined_cosine_is_weighted_mean_of_model_cosines():
    # Model A: x=(3,4)/5=(.6,.8), y=(1,0) -> cos_A(x, y) = 0.6.
    # Model B (rows in the other order, unnormalised): y=(0,2)->(0,1), x=(1,0) -> cos_B = 0.
    # Weights 1 and 3: (1*0.6 + 3*0) / 4 = 0.15.
    a = _set(["x", "y"], [[3, 4], [1, 0]], [7, 8])
    b = _set(["y", "x"], [[0, 2], [1, 0]], [8, 7])
    c = combine_embedding_sets([a, b], [1, 3])
    assert c.ids.tolist() == ["x", "y"] and c.labels.tolist() == [7, 8]
    assert c.embeddings.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(c.embeddings, axis=1), 1.0, atol=1e-6)
    assert float(c.embeddings[0] @ c.embeddings[1]) == pytest.approx(0.15, abs=1e-6)
    # Equal weights: (0.6 + 0) / 2 = 0.3.
    e = combine_embedding_sets([a, b]).embeddings
    assert float(e[0] @ e[1]) == pytest.approx(0.3, abs=1e-6)


def test_centring_on_the_index_mean():
    # Rows (2,0) and (0,1) normalise to (1,0), (0,1); their mean is (.5,.5).
    # Centred: (.5,-.5) and (-.5,.5) -> unit (.707,-.707), (-.707,.707): cosine -1 (was 0).
    a = _set(["x", "y"], [[2, 0], [0, 1]], [1, 2])
    (mean,) = model_means([a])
    np.testing.assert_allclose(mean, [0.5, 0.5])
    e = combine_embedding_sets([a], means=[mean]).embeddings
    np.testing.assert_allclose(e[0], [np.sqrt(0.5), -np.sqrt(0.5)], atol=1e-6)
    assert float(e[0] @ e[1]) == pytest.approx(-1.0, abs=1e-6)


def test_combine_float16_input_and_single_set():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype(np.float16)
    c = combine_embedding_sets([_set(list("abcde"), x, [0] * 5)], [2.0])
    np.testing.assert_allclose(c.embeddings, l2_normalize(x.astype(np.float32)), atol=1e-6)


@pytest.mark.parametrize(
    "second, weights, match",
    [
        (_set(["x", "z"], [[1, 0], [0, 1]], [7, 8]), None, "ids differ"),
        (_set(["y", "x"], [[1, 0], [0, 1]], [9, 7]), None, "labels disagree"),
        (_set(["y", "x"], [[1, 0], [0, 1]], [8, 7]), [1], "1 weights for 2"),
        (_set(["y", "x"], [[1, 0], [0, 1]], [8, 7]), [1, 0], "positive"),
    ],
)
def test_combine_rejects_mismatches(second, weights, match):
    a = _set(["x", "y"], [[1, 0], [0, 1]], [7, 8])
    with pytest.raises(ValueError, match=match):
        combine_embedding_sets([a, second], weights)


# ----------------------------------------------------------------------------- re-ranking


def test_rerank_formula_by_hand():
    # Query 0: neighbours (class 5, sim 0.9, B 0.5) and (class 6, sim 0.8, B 0.1):
    #   scores 0.9-0.5=0.4 and 0.8-0.1=0.7 -> class 6, confidence 0.7 - C(0.2) = 0.5.
    # Query 1: sims 1.2 (clamped to 1) and -0.3 (clamped to 0), B 0.3 and 0:
    #   scores 0.7 and 0.0 -> class 1, confidence 0.7 - 0.05 = 0.65.
    labels, conf = predict_nonlandmark_rerank(
        np.array([[5, 6], [1, 2]]),
        np.array([[0.9, 0.8], [1.2, -0.3]]),
        np.array([[0.5, 0.1], [0.3, 0.0]]),
        np.array([0.2, 0.05]),
    )
    assert labels.tolist() == [6, 1]
    np.testing.assert_allclose(conf, [0.5, 0.65], atol=1e-6)


def test_rerank_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one shape"):
        predict_nonlandmark_rerank(
            np.zeros((2, 3), int), np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2)
        )
    with pytest.raises(ValueError, match="query_penalty"):
        predict_nonlandmark_rerank(
            np.zeros((2, 3), int), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3)
        )


def test_nonlandmark_similarity_mean_of_k_nearest_and_self_excluded():
    # Non-landmarks at angles 0, 60, 90 degrees: n0=(1,0), n1=(.5,.866), n2=(0,1).
    nl = np.array([[1, 0], [0.5, np.sqrt(3) / 2], [0, 1]], np.float32)
    index = build_scann_index(nl)
    # Row (1,0): cosines 1, 0.5, 0 -> k=2 mean 0.75; k=3 mean 0.5.
    q = np.array([[1, 0]], np.float32)
    assert nonlandmark_similarity(index, q, 2)[0] == pytest.approx(0.75, abs=1e-6)
    assert nonlandmark_similarity(index, q, 3)[0] == pytest.approx(0.5, abs=1e-6)
    # Same row named "n0", an image of the set: itself is skipped -> (0.5 + 0) / 2 = 0.25;
    # an unrelated id keeps it -> 0.75.
    ids = np.array(["n0", "n1", "n2"])
    got = nonlandmark_similarity(index, q, 2, ids=np.array(["n0"]), nonlandmark_ids=ids)
    assert got[0] == pytest.approx(0.25, abs=1e-6)
    got = nonlandmark_similarity(index, q, 2, ids=np.array(["other"]), nonlandmark_ids=ids)
    assert got[0] == pytest.approx(0.75, abs=1e-6)
