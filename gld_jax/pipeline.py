"""The phases of a run, in order: data -> train -> embed -> evaluate.

Each phase reads what the previous one left in the workdir, so any phase can be
rerun alone (`--mode`), and a finished phase is not redone.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from gld_jax.data.prepare import prepare_data, resolve_dirs
from gld_jax.metrics import gap_by_usage, global_average_precision, read_solution
from gld_jax.retrieval.embeddings import (
    EmbeddingSet,
    declare_shard_set,
    load_embeddings,
    save_embeddings,
    shard_path,
)
from gld_jax.retrieval.extract import Embedder
from gld_jax.retrieval.recognize import recognize
from gld_jax.retrieval.submission import write_submission
from gld_jax.train.mesh import make_mesh
from gld_jax.train.stages import StagePlan
from gld_jax.train.trainer import train
from gld_jax.utils import fs

log = logging.getLogger(__name__)

SOLUTION_CSV = "recognition_solution_v2.1.csv"


def _local_batch(config) -> int:
    # The eval batch must split over this process's devices.
    n = jax.local_device_count()
    return max(n, (config.eval.batch_size // n) * n)


def _eval_split(config, tfrecord_dir, plan: StagePlan, split: str, embedder: Embedder, desc: str):
    from gld_jax.data import input_pipeline

    ds = input_pipeline.eval_dataset(
        tfrecord_dir,
        split=split,
        image_size=plan.image_size,
        batch_size=_local_batch(config),
        label_set=plan.label_set,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        dct_scaling=config.input.dct_scaling,
    )
    manifest = input_pipeline.read_manifest(tfrecord_dir)
    total = manifest["splits"][split]["num_examples"]
    return embedder(ds, total=math.ceil(total / jax.process_count()), desc=desc)


def validation_gap(config, tfrecord_dir: str, mesh, model, plan: StagePlan) -> float:
    """GAP of top-1 retrieval for every `val_every`-th image of the held-out fold,
    against the training folds' images of the stage's label set (the recipe's
    validation)."""
    if config.fold < 0:
        return float("nan")
    train_set, aux = _eval_split(
        config, tfrecord_dir, plan, "train", Embedder(model, mesh), f"validate stage {plan.index}"
    )
    in_set = aux["label"] >= 0
    held_out = in_set & (aux["fold"] == config.fold)
    queries = train_set.select(np.flatnonzero(held_out)[:: config.val_every])
    index = train_set.select(in_set & ~held_out)
    labels, conf = recognize(
        index,
        queries,
        mode=config.eval.prediction,
        num_neighbors=config.eval.num_neighbors,
        brute_force_threshold=config.eval.brute_force_threshold,
    )
    predictions = {
        i: (int(lab), float(c)) for i, lab, c in zip(queries.ids, labels, conf, strict=True)
    }
    solution = {i: {int(lab)} for i, lab in zip(queries.ids, queries.labels, strict=True)}
    return global_average_precision(predictions, solution)


def embeddings_dir(workdir: str) -> str:
    return os.path.join(workdir, "embeddings")


def embed_splits(config, tfrecord_dir: str, mesh, model, plan: StagePlan, workdir: str) -> None:
    """Writes <workdir>/embeddings/{train,test}/part-<process>.npz (index = the
    final stage's labelled training images), L2-normalised, in
    `eval.embedding_dtype`.

    Each process writes its own shard (atomically); `shards.json` names the
    process count, so the folder loads as one set only when every process's
    shard is there. A split is skipped (resume) only when all its shards exist:
    every process must join the sharded embedding step, so the decision has to
    be the same on all of them (the workdir is shared, as for checkpoints)."""
    dtype = np.dtype(config.eval.get("embedding_dtype", "float32"))
    embedder = None
    for split in ("train", "test"):
        directory = os.path.join(embeddings_dir(workdir), split)
        if jax.process_index() == 0:
            declare_shard_set(directory, jax.process_count())
        if all(fs.exists(shard_path(directory, p)) for p in range(jax.process_count())):
            continue
        path = shard_path(directory, jax.process_index())
        embedder = embedder or Embedder(model, mesh)
        emb, aux = _eval_split(config, tfrecord_dir, plan, split, embedder, f"embed {split}")
        if split == "train":
            emb = emb.select(aux["label"] >= 0)
        save_embeddings(path, emb, dtype=dtype)


def evaluate(config, workdir: str) -> dict:
    """Retrieval over the saved embeddings -> submission.csv and GAP (when the
    data dir has the solution CSV)."""
    index = load_embeddings(os.path.join(embeddings_dir(workdir), "train"))
    queries = load_embeddings(os.path.join(embeddings_dir(workdir), "test"))
    labels, conf = recognize(
        index,
        queries,
        mode=config.eval.prediction,
        num_neighbors=config.eval.num_neighbors,
        brute_force_threshold=config.eval.brute_force_threshold,
    )
    submission = os.path.join(workdir, "submission.csv")
    write_submission(submission, list(queries.ids), labels, conf)
    out: dict = {"submission": submission, "num_queries": len(queries), "index_size": len(index)}
    data_dir, _ = resolve_dirs(config, workdir)
    solution_path = os.path.join(data_dir, SOLUTION_CSV)
    if fs.exists(solution_path):
        predictions = {
            i: (int(lab), float(c)) for i, lab, c in zip(queries.ids, labels, conf, strict=True)
        }
        for name, value in gap_by_usage(predictions, solution_path).items():
            # "GAP" -> gap, "GAP/Public" -> gap_public (only with a Usage column)
            out[name.lower().replace("/", "_")] = round(value, 4)
        out["chance_gap"] = round(_chance_gap(index, solution_path), 4)
    return out


def _chance_gap(index: EmbeddingSet, solution_path: str) -> float:
    """Expected GAP of guessing the most frequent training landmark for every
    query with random confidences: a floor to read the GAP against."""
    solution = read_solution(solution_path)
    ids, counts = np.unique(index.labels[index.labels >= 0], return_counts=True)
    top = int(ids[np.argmax(counts)])
    rng = np.random.default_rng(0)
    preds = {q: (top, float(rng.random())) for q in solution}
    return global_average_precision(preds, solution)


def run_pipeline(
    config, workdir: str, *, mode: str = "all", stop_after_steps: int | None = None
) -> dict:
    mesh = make_mesh(config.mesh.data, config.mesh.model)
    summary: dict = {
        "workdir": workdir,
        "backbone": config.model.backbone,
        "devices": jax.device_count(),
    }
    tfrecord_dir = prepare_data(config, workdir, is_main=jax.process_index() == 0)

    if mode in ("all", "train", "embed"):
        validate_fn = None
        if mode != "embed" and config.eval.validate:

            def validate_fn(model, plan):
                return validation_gap(config, tfrecord_dir, mesh, model, plan)

        result = train(
            config,
            workdir=workdir,
            tfrecord_dir=tfrecord_dir,
            mesh=mesh,
            validate_fn=validate_fn,
            stop_after_steps=stop_after_steps,
        )
        summary.update(
            steps_run=result.steps_run,
            total_steps=result.plans[-1].last_step,
            train_seconds=round(result.train_seconds, 1),
            validation_gap=[round(g, 4) for g in result.validation_gap],
        )
        if not result.complete:
            summary["stopped_at_step"] = result.global_step
            return summary
        if mode in ("all", "embed"):
            embed_splits(config, tfrecord_dir, mesh, result.model, result.plans[-1], workdir)
    if mode in ("all", "evaluate") and jax.process_index() == 0:
        summary.update(evaluate(config, workdir))
    return summary
