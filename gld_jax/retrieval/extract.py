"""Running the model over a split: eval-mode embeddings for every image.

Each process embeds its own slice of the split (the input pipeline shards by
process) and keeps the rows that landed on its devices, so a multi-host job
writes one shard per host and nothing is gathered through one machine.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.head_topk import sharded_head_top_k
from gld_jax.train import mesh as mesh_lib
from gld_jax.train.state import split_model
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


def embed_fn(params, batch_stats, images: jax.Array, *, graphdef, rng_state) -> jax.Array:
    """Eval-mode embeddings, L2-normalised: uint8 [N,S,S,3] -> float32 [N,D]."""
    model = nnx.merge(graphdef, params, batch_stats, rng_state)
    emb = model(images)
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def make_embed_step(*, graphdef, rng_state, mesh: Mesh, params_sharding, stats_sharding):
    """The jitted embedding step (eval-mode graphdef), batch split over all devices."""
    fn = functools.partial(embed_fn, graphdef=graphdef, rng_state=rng_state)
    return jax.jit(
        fn,
        in_shardings=(params_sharding, stats_sharding, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.batch_sharding(mesh),
    )


def _embed_and_head_fn(params, batch_stats, images, *, graphdef, rng_state, k, mesh):
    emb = embed_fn(params, batch_stats, images, graphdef=graphdef, rng_state=rng_state)
    head = nnx.merge(graphdef, params, batch_stats, rng_state).head
    rows = jax.lax.with_sharding_constraint(emb, mesh_lib.head_input_sharding(mesh))
    scores, classes = sharded_head_top_k(
        rows, head.centers[...], k=k, num_valid_classes=head.num_classes, mesh=mesh
    )
    return emb, scores, classes


class Embedder:
    """Compiles the eval-mode embedding step once per model and image size.

    With ``head_k > 0`` the step also scores each image against the classifier
    head, class-sharded (see :mod:`gld_jax.retrieval.head_topk`), and the sets it
    returns carry the top ``head_k`` classes as landmark ids
    (``head_landmark_ids[class]``) with their cosines.
    """

    def __init__(
        self, model, mesh: Mesh, *, head_k: int = 0, head_landmark_ids: np.ndarray | None = None
    ):
        model.eval()
        graphdef, params, stats, rng_state = split_model(model)
        model.train()
        self._mesh = mesh
        p_sh = mesh_lib.tree_shardings(params, mesh)
        s_sh = mesh_lib.tree_shardings(stats, mesh)
        self._params = jax.device_put(params, p_sh)
        self._stats = jax.device_put(stats, s_sh)
        self._head_k = head_k
        if head_k > 0:
            num_classes = model.head.num_classes
            if head_landmark_ids is None or len(head_landmark_ids) != num_classes:
                raise ValueError(
                    f"the head has {num_classes} classes: give their {num_classes} landmark ids"
                )
            self._landmark_ids = np.asarray(head_landmark_ids, np.int64)
            rows = mesh_lib.batch_sharding(mesh)
            self._step = jax.jit(
                functools.partial(
                    _embed_and_head_fn,
                    graphdef=graphdef,
                    rng_state=rng_state,
                    k=min(head_k, num_classes),
                    mesh=mesh,
                ),
                in_shardings=(p_sh, s_sh, rows),
                out_shardings=(rows, rows, rows),
            )
        else:
            self._step = make_embed_step(
                graphdef=graphdef,
                rng_state=rng_state,
                mesh=mesh,
                params_sharding=p_sh,
                stats_sharding=s_sh,
            )

    def embed_batch(
        self, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One batch through the compiled step.

        Args:
          images: uint8 ``[B, S, S, 3]``, this process's rows; B a multiple of
            its device count.

        Returns:
          ``(embeddings [B, D] float32 L2-normalised, head landmark ids [B, k]
          int64, head cosines [B, k] float32)``; the head lists are None without
          ``head_k``.
        """
        sharding = mesh_lib.batch_sharding(self._mesh)
        out = self._step(
            self._params, self._stats, jax.make_array_from_process_local_data(sharding, images)
        )
        if self._head_k > 0:
            emb, scores, classes = (process_local_rows(x) for x in out)
            return emb, self._landmark_ids[classes], scores
        return process_local_rows(out), None, None

    def __call__(
        self, dataset, *, total: int | None = None, desc: str = "embed"
    ) -> tuple[EmbeddingSet, dict[str, np.ndarray]]:
        """Embeds a finite eval dataset of {"image", "id", "landmark_id", "mask", ...}
        batches; padded rows (mask False) are dropped.

        Returns:
          (EmbeddingSet with labels = landmark ids, {other batch key: [N] values}).
        """
        rows: dict[str, list[np.ndarray]] = {}
        bar = progress_bar(total=total, desc=desc, unit="img", enabled=jax.process_index() == 0)
        for batch in dataset.as_numpy_iterator():
            emb, head_labels, head_scores = self.embed_batch(batch["image"])
            keep = batch["mask"].astype(bool)
            if head_labels is not None:
                rows.setdefault("head_scores", []).append(head_scores[keep])
                rows.setdefault("head_labels", []).append(head_labels[keep])
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
            head_labels=cols.pop("head_labels", None),
            head_scores=cols.pop("head_scores", None),
        )
        return emb_set, cols
