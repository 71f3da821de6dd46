"""Accelerator search (gld_jax.retrieval.accelerator_search) on 8 fake CPU devices:
every backend's exact search (one pass, binned, the TPU's strided bins, the GPU
kernel interpreted) equals numpy's, ties included; the evaluation gives the
same predictions and submission as the CPU path; an index too large for the
devices is one line. The TPU's compiled figures are in test_tpu_compile.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from gld_jax.retrieval.accelerator_search import (
    AcceleratorIndex,
    IndexTooLargeError,
    plan_search,
    resolve_search,
    search_method,
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


# Every per-device top-k the backends run, on the CPU: the TPU's strided bins
# with their partial reduction written out, and the GPU kernel interpreted.
METHODS = [
    ("onepass", "float32"),
    ("binned", "float32"),
    ("binned", "bfloat16"),
    ("partial_emulated", "float32"),
    ("pallas_interpret", "bfloat16"),
]


@pytest.mark.parametrize("method,dtype", METHODS)
@pytest.mark.parametrize("k", [1, 5, 10])
def test_sharded_exact_search_equals_numpy_with_ties(k, method, dtype):
    """203 rows (not a multiple of 8: the last device holds padding) of +-1/4
    entries in 16 dimensions, so every cosine is a multiple of 1/16, computed
    exactly by both (in bfloat16 too), and ties are everywhere: they must come
    back by row number, as numpy's exact search orders them. 37 queries in
    blocks (a padded last block). The binned methods keep only each bin's
    maximum before rescoring, so ties across bins test their tie rule."""
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
    search = AcceleratorIndex(index, num_neighbors=k, method=method, dtype=dtype)
    plan = search.plan
    assert plan.devices == 8 and plan.method == method
    assert plan.rows_per_device >= 26 and plan.rows_per_device % plan.bin_size == 0
    if method != "onepass":
        assert plan.rows_per_device // plan.bin_size >= 2  # several bins per device
    block = 128 if method.startswith("pallas") else 16
    rows, sims = search.search(queries, k, batch_size=block)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(sims, want_sims)
    assert len(np.unique(want_sims)) < want_sims.size / 4  # ties did decide the order
    if k == 10:  # row 3's copies, in row order
        assert rows[-3].tolist() == [3, *range(150, 159)]


@pytest.mark.parametrize("method", ["binned", "partial_emulated"])
def test_binned_search_equals_the_one_pass_search_on_clustered_data(method):
    """Clustered rows, where the best neighbours of a query crowd into few bins
    (the case a bin-max search could get wrong if it kept fewer than k bins):
    the same rows and cosines as the one-pass search, k = 10."""
    rng = np.random.default_rng(5)
    index, _ = _clustered(rng, 3000, 32, 20, 0.3)
    order = np.argsort(rng.integers(0, 20, 3000), kind="stable")
    index = index[order]  # rows of one cluster next to each other: in the same bins
    queries = _unit(index[::37] + 0.1 * rng.standard_normal((82, 32)))
    one = AcceleratorIndex(index, method="onepass").search(queries, 10)
    two = AcceleratorIndex(index, method=method).search(queries, 10)
    np.testing.assert_array_equal(two[0], one[0])
    np.testing.assert_allclose(two[1], one[1], atol=2e-6)


def test_a_block_whose_partial_reduction_fails_its_check_is_searched_in_one_pass(
    monkeypatch, caplog
):
    """On a TPU every block checks that each bin's maximum came from that bin;
    a block that fails is searched again by the one-pass program."""
    from gld_jax.retrieval import binned_topk

    real = binned_topk.bin_max_emulated_partial

    def unchecked(*args, **kw):
        maxima, _ = real(*args, **kw)
        return maxima * 0, jnp.bool_(False)  # wrong maxima, reported as such

    monkeypatch.setattr(binned_topk, "bin_max_emulated_partial", unchecked)
    rng = np.random.default_rng(6)
    index, _ = _clustered(rng, 500, 16, 10, 0.4)
    queries = _unit(index[::7] + 0.1 * rng.standard_normal((72, 16)))
    want = exact_search(index, queries, 5)
    with caplog.at_level("WARNING"):
        rows, sims = AcceleratorIndex(index, method="partial_emulated").search(queries, 5)
    np.testing.assert_array_equal(rows, want[0])
    assert "searched in one pass" in caplog.text


def test_each_backend_runs_its_own_search():
    assert search_method("tpu", "bfloat16", 512) == "partial"
    # GLDv2 (1,580,470 rows): at 512 dims on a v5e-8 the bins move less than the
    # full scores; at 3,072 dims over a v3-32's 32 cores the gathered rows more.
    assert search_method("tpu", "bfloat16", 512, rows_per_device=197_559) == "partial"
    assert search_method("tpu", "bfloat16", 3072, rows_per_device=49_390) == "onepass"
    assert search_method("tpu", "bfloat16", 512, approx=True) == "onepass"
    assert search_method("gpu", "bfloat16", 512) == "pallas"
    assert search_method("gpu", "float32", 512) == "binned"  # Triton's f32 dot is TF32
    assert search_method("gpu", "bfloat16", 8) == "binned"  # too narrow to tile
    assert search_method("cpu", "float32", 512) == "binned"


def test_the_gpu_kernel_lowers_to_triton():
    """The fused bin-max kernel lowers for CUDA (Pallas -> Triton IR) on any
    machine: the search program as a GPU would compile it."""
    import jax

    from gld_jax.retrieval.pallas_bin_max import bin_max_pallas

    q = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16)
    rows = jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16)
    n = jax.ShapeDtypeStruct((1,), jnp.int32)
    fn = jax.jit(lambda q, r, n: bin_max_pallas(q, r, n, bin_size=16))
    text = fn.trace(q, rows, n).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and "bin_max" in text


def test_approximate_search_is_exact_off_the_tpu(caplog):
    """`search_recall` < 1 is TPU-KNN's approx_max_k; XLA has no faster form of
    it on CPUs and GPUs, so there the search is exact, said in one line."""
    rng = np.random.default_rng(2)
    index, _ = _clustered(rng, 1000, 32, 80, 0.5)
    queries = _unit(rng.standard_normal((100, 32)) * 0.3 + index[:100])
    want, _ = exact_search(index, queries, 1)
    with caplog.at_level("INFO"):
        search = AcceleratorIndex(index, approx=True, recall_target=0.95)
    assert search.kind == "accelerator_exact"
    assert "has no faster form on cpu: the search is exact" in caplog.text
    rows, _ = search.search(queries, 1)
    np.testing.assert_array_equal(rows, want)


def test_bfloat16_index_keeps_the_neighbours():
    rng = np.random.default_rng(1)
    index, _ = _clustered(rng, 2000, 64, 50, 0.4)
    queries = index[::10] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    want, want_sims = exact_search(index, _unit(queries), 1)
    rows, sims = AcceleratorIndex(index, dtype="bfloat16").search(_unit(queries), 1)
    assert (rows == want).mean() >= 0.99
    np.testing.assert_allclose(sims, want_sims, atol=1e-2)


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
