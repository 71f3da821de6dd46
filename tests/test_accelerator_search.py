"""Accelerator search (gld_jax.retrieval.accelerator_search) on 8 fake CPU devices:
the sharded exact search equals numpy's, ties included; approximate search
meets its recall; the evaluation gives the same predictions and submission as
the CPU path; an index too large for the devices is one line."""

import numpy as np
import pytest

from gld_jax.retrieval.accelerator_search import (
    AcceleratorIndex,
    IndexTooLargeError,
    plan_search,
    resolve_search,
)
from gld_jax.retrieval.embeddings import EmbeddingSet, save_embeddings
from gld_jax.retrieval.evaluate import evaluate_retrieval, main
from gld_jax.retrieval.index import exact_search
from gld_jax.retrieval.searchers import build_index


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, n, dim, clusters, noise):
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, n)
    return _unit(centres[labels] + noise * rng.standard_normal((n, dim))), labels


@pytest.mark.parametrize("k", [1, 5, 10])
def test_sharded_exact_search_equals_numpy_with_ties(k):
    """203 rows (not a multiple of 8: the last device holds padding) of +-1/4
    entries in 16 dimensions, so every cosine is a multiple of 1/16, computed
    exactly by both, and ties are everywhere: they must come back by row number,
    as numpy's exact search orders them. 37 queries in blocks of 16 (a padded
    last block)."""
    rng = np.random.default_rng(0)
    index = rng.choice([-0.25, 0.25], size=(203, 16)).astype(np.float32)
    index[150:160] = index[3]  # ten copies of row 3, on devices 5 and 6
    queries = np.concatenate([rng.choice([-0.25, 0.25], size=(34, 16)), index[[3, 7, 150]]])
    queries = queries.astype(np.float32)
    want_rows, want_sims = exact_search(index, queries, k)
    # numpy's search against a full sort by (cosine desc, row asc).
    scores = queries @ index.T
    order = np.stack([np.lexsort((np.arange(203), -row))[:k] for row in scores])
    np.testing.assert_array_equal(want_rows, order)
    search = AcceleratorIndex(index, num_neighbors=k)
    assert search.plan.devices == 8 and search.plan.rows_per_device == 26
    rows, sims = search.search(queries, k, batch_size=16)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(sims, want_sims)
    assert len(np.unique(want_sims)) < want_sims.size / 4  # ties did decide the order
    if k == 10:  # row 3's copies, in row order
        assert rows[-3].tolist() == [3, *range(150, 159)]


def test_bfloat16_index_keeps_the_neighbours():
    rng = np.random.default_rng(1)
    index, _ = _clustered(rng, 2000, 64, 50, 0.4)
    queries = index[::10] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    want, want_sims = exact_search(index, _unit(queries), 1)
    rows, sims = AcceleratorIndex(index, dtype="bfloat16").search(_unit(queries), 1)
    assert (rows == want).mean() >= 0.99
    np.testing.assert_allclose(sims, want_sims, atol=1e-2)


def test_approximate_search_meets_its_recall_target():
    """lax.approx_max_k per device at recall target 0.95, on clustered data:
    recall@1 against exact search >= 0.95. (XLA:CPU computes approx_max_k
    exactly; on a TPU the same call is the partial reduction of TPU-KNN.)"""
    rng = np.random.default_rng(2)
    index, _ = _clustered(rng, 4000, 32, 80, 0.5)
    queries = _unit(rng.standard_normal((300, 32)) * 0.3 + index[:300])
    want, _ = exact_search(index, queries, 1)
    search = AcceleratorIndex(index, approx=True, recall_target=0.95)
    assert search.kind == "accelerator_approx"
    rows, _ = search.search(queries, 1)
    assert (rows[:, 0] == want[:, 0]).mean() >= 0.95


def test_index_too_large_is_one_line_naming_the_limit_and_fallback():
    with pytest.raises(IndexTooLargeError) as err:
        plan_search(1_580_470, 3072, devices=1, dtype="float32", k=5, memory_bytes=16 * 2**30)
    line = str(err.value)
    assert "\n" not in line and "18.09 GiB per device" in line
    assert "9.60 GiB limit" in line and "eval.search=scann" in line
    # On 8 devices in bfloat16 it fits, and the block's scores stay in budget.
    plan = plan_search(1_580_470, 3072, devices=8, dtype="bfloat16", k=5, memory_bytes=16 * 2**30)
    assert plan.rows_per_device == 197_559
    assert plan.query_block * plan.rows_per_device * 4 <= 0.25 * (16 * 2**30)
    with pytest.raises(IndexTooLargeError):
        AcceleratorIndex(np.eye(64, dtype=np.float32), memory_bytes=1024)


def test_auto_is_scann_on_a_cpu_and_bad_values_are_refused():
    assert resolve_search("auto", rows=10, dim=4) == "scann"
    assert resolve_search("accelerator", rows=10, dim=4) == "accelerator"
    with pytest.raises(ValueError, match="eval.search"):
        resolve_search("gpu", rows=10, dim=4)
    assert build_index(np.eye(4, dtype=np.float32), search="auto").kind == "brute_force"
    assert build_index(np.eye(4, dtype=np.float32), search="accelerator").kind == (
        "accelerator_exact"
    )


def _sets(rng, tag, n, dim, labels):
    ids = np.array([f"{tag}{i:04d}" for i in range(n)])
    emb, _ = _clustered(rng, n, dim, 12, 0.6)
    classes = 20
    head_labels = np.stack([rng.permutation(classes)[:5] for _ in range(n)]).astype(np.int64)
    head_scores = np.sort(rng.uniform(0.1, 0.9, (n, 5)), axis=1)[:, ::-1].astype(np.float32)
    return EmbeddingSet(ids, emb, labels, head_labels=head_labels, head_scores=head_scores)


def test_every_mode_predicts_the_same_on_the_accelerator(tmp_path):
    """The pipeline's evaluation with search=accelerator (float32, exact) gives the
    CPU's exact predictions and confidences in every mode, including the
    non-landmark re-rank, whose own index then runs on the accelerator too."""
    rng = np.random.default_rng(3)
    index = _sets(rng, "t", 400, 32, rng.integers(0, 20, 400))
    queries = _sets(rng, "q", 90, 32, np.full(90, -1))
    nonlandmark = _sets(rng, "n", 60, 32, np.full(60, -1))
    for mode in ("top1", "knn_vote", "nonlandmark_rerank", "head", "blend", "blend_rerank"):
        got = {}
        for search in ("exact_cpu", "accelerator"):
            ev = evaluate_retrieval(
                queries,
                index=index,
                mode=mode,
                num_neighbors=5,
                nonlandmark=nonlandmark,
                index_params={"search": search},
            )
            got[search] = ev
        a, b = got["exact_cpu"], got["accelerator"]
        np.testing.assert_array_equal(b.labels, a.labels, err_msg=mode)
        np.testing.assert_allclose(b.confidences, a.confidences, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(b.neighbor_rows, a.neighbor_rows)


def test_cli_gives_the_cpu_submission_on_a_weighted_ensemble(tmp_path, capsys):
    """`scripts/evaluate_scann.py --search accelerator` on a two-model weighted
    ensemble (a 3,000-row index, below ScaNN's tree threshold, so the CPU path is
    exact too) writes the default search's submission: the same landmark for
    every image, confidences equal to the CSV's last digit (the matmul sums in
    another order than numpy's)."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 20, 3000)
    paths = {}
    for m in ("a", "b"):
        for split, n, lab in (("train", 3000, labels), ("test", 120, np.full(120, -1))):
            s = _sets(rng, split[:2], n, 16, lab)
            paths[m, split] = str(tmp_path / f"{m}_{split}.npz")
            save_embeddings(paths[m, split], s)
    outputs = {}
    for search in ("scann", "accelerator"):
        out = str(tmp_path / f"{search}.csv")
        argv = ["--index", paths["a", "train"], paths["b", "train"]]
        argv += ["--queries", paths["a", "test"], paths["b", "test"]]
        argv += ["--weights", "1", "0.5", "--output", out, "--search", search]
        assert main(argv) == 0
        rows = [line.split(",") for line in open(out).read().splitlines()[1:]]
        outputs[search] = [(i, *(p.split() or ["", "0"])) for i, p in rows]
    cpu, acc = outputs["scann"], outputs["accelerator"]
    assert [r[:2] for r in acc] == [r[:2] for r in cpu]
    np.testing.assert_allclose(
        [float(r[2]) for r in acc], [float(r[2]) for r in cpu], rtol=0, atol=1.5e-6
    )
    assert (
        main(
            [
                "--queries",
                paths["a", "test"],
                "--index",
                paths["a", "train"],
                "--output",
                str(tmp_path / "x.csv"),
                "--search_recall",
                "1.5",
            ]
        )
        == 2
    )
    assert "--search_recall must be in (0, 1]" in capsys.readouterr().err
