"""Running the model over a split: eval-mode embeddings for every image.

Each process embeds its own slice of the split (the input pipeline shards by
process) and keeps the rows that landed on its devices, so a multi-host job
writes one shard per host and nothing is gathered through one machine.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.state import split_model
from gld_jax.train.step import make_embed_step
from gld_jax.utils.progress import progress_bar


def process_local_rows(x: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded global array that live on this process, in
    the order this process supplied them."""
    if jax.process_count() == 1:
        return np.asarray(x)
    seen, rows = set(), []
    for shard in sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0):
        start = shard.index[0].start or 0
        if start not in seen:  # replicas over the 'model' axis
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows)


class Embedder:
    """Compiles the eval-mode embedding step once per model and image size."""

    def __init__(self, model, mesh: Mesh):
        model.eval()
        graphdef, params, stats, rng_state = split_model(model)
        model.train()
        self._mesh = mesh
        p_sh = mesh_lib.tree_shardings(params, mesh)
        s_sh = mesh_lib.tree_shardings(stats, mesh)
        self._params = jax.device_put(params, p_sh)
        self._stats = jax.device_put(stats, s_sh)
        self._step = make_embed_step(
            graphdef=graphdef,
            rng_state=rng_state,
            mesh=mesh,
            params_sharding=p_sh,
            stats_sharding=s_sh,
        )

    def __call__(
        self, dataset, *, total: int | None = None, desc: str = "embed"
    ) -> tuple[EmbeddingSet, dict[str, np.ndarray]]:
        """Embeds a finite eval dataset of {"image", "id", "landmark_id", "mask", ...}
        batches; padded rows (mask False) are dropped.

        Returns:
          (EmbeddingSet with labels = landmark ids, {other batch key: [N] values}).
        """
        sharding = mesh_lib.batch_sharding(self._mesh)
        rows: dict[str, list[np.ndarray]] = {}
        bar = progress_bar(total=total, desc=desc, unit="img", enabled=jax.process_index() == 0)
        for batch in dataset.as_numpy_iterator():
            images = jax.make_array_from_process_local_data(sharding, batch["image"])
            emb = process_local_rows(self._step(self._params, self._stats, images))
            keep = batch["mask"].astype(bool)
            rows.setdefault("embeddings", []).append(emb[keep])
            for key, value in batch.items():
                if key not in ("image", "mask"):
                    rows.setdefault(key, []).append(value[keep])
            bar.update(int(keep.sum()))
        bar.close()
        if not rows:
            raise ValueError(f"{desc}: the split has no images")
        cols = {k: np.concatenate(v) for k, v in rows.items()}
        emb_set = EmbeddingSet(
            ids=cols.pop("id").astype(str),
            embeddings=cols.pop("embeddings"),
            labels=cols.pop("landmark_id").astype(np.int64),
        )
        return emb_set, cols
