"""Embedding sets on disk: dtypes, per-process shard sets that load only when complete."""

import numpy as np
import pytest

from gld_jax.retrieval.embeddings import (
    EmbeddingSet,
    declare_shard_set,
    load_embeddings,
    save_embeddings,
    shard_path,
)


def _part(p, n=3, dim=4):
    rng = np.random.default_rng(p)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return EmbeddingSet(np.array([f"p{p}-{i}" for i in range(n)]), x, np.arange(n) + 10 * p)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_dtype_round_trip(tmp_path, dtype):
    e = _part(0)
    save_embeddings(str(tmp_path / "e.npz"), e, dtype=dtype)
    back = load_embeddings(str(tmp_path / "e.npz"))
    assert back.embeddings.dtype == dtype and back.ids.tolist() == e.ids.tolist()
    # float16 keeps 11 significant bits: |error| <= 2**-11 for values in [-1, 1].
    np.testing.assert_allclose(
        back.embeddings, e.embeddings, atol=2**-11 if dtype == np.float16 else 0
    )


def test_shard_set_loads_only_when_complete(tmp_path):
    d = str(tmp_path / "train")
    declare_shard_set(d, 2)
    save_embeddings(shard_path(d, 1), _part(1))
    with pytest.raises(ValueError, match="incomplete shard set"):
        load_embeddings(d)
    save_embeddings(shard_path(d, 0), _part(0))
    both = load_embeddings(d)
    assert both.ids.tolist() == _part(0).ids.tolist() + _part(1).ids.tolist()
    declare_shard_set(d, 2)  # same count again: fine (a resumed run)
    with pytest.raises(ValueError, match="set of 2 shards, this run has 4"):
        declare_shard_set(d, 4)
    save_embeddings(str(tmp_path / "train" / "stray.npz"), _part(5))
    with pytest.raises(ValueError, match="outside the set"):
        load_embeddings(d)


def test_folder_without_shard_set_loads_every_file(tmp_path):
    # Folders written before shards.json existed: all .npz files in name order.
    save_embeddings(str(tmp_path / "part-00000.npz"), _part(0))
    save_embeddings(str(tmp_path / "part-00001.npz"), _part(1))
    assert len(load_embeddings(str(tmp_path))) == 6
