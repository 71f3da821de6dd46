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

from gld_jax.config.run_config import save_run_config
from gld_jax.data.batches import host_batches
from gld_jax.data.prepare import resolve_dirs
from gld_jax.metrics import (
    correct_mask,
    global_average_precision,
    ranking_auc,
    read_solution,
    solution_has_usage,
)
from gld_jax.retrieval.embeddings import (
    EmbeddingSet,
    declare_shard_set,
    load_embeddings,
    save_embeddings,
    shard_path,
)
from gld_jax.retrieval.evaluate import (
    RERANK_MODES,
    build_labelled_index,
    evaluate_retrieval,
    gap_scores,
)
from gld_jax.retrieval.extract import Embedder
from gld_jax.retrieval.nonlandmark_set import select_nonlandmarks
from gld_jax.retrieval.predict import predict_head
from gld_jax.retrieval.submission import write_submission
from gld_jax.shared_data import prepare_shared_data
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


def _eval_split(
    config,
    tfrecord_dir,
    plan: StagePlan,
    split: str,
    embedder: Embedder,
    desc: str,
    *,
    label_set: str | None = None,
    fold: int | None = None,
    every: int = 1,
):
    from gld_jax.data import input_pipeline

    label_set = label_set or plan.label_set
    ds = input_pipeline.eval_dataset(
        tfrecord_dir,
        split=split,
        image_size=plan.image_size,
        batch_size=_local_batch(config),
        label_set=label_set,
        fold=fold,
        every=every,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        dct_scaling=config.input.dct_scaling,
    )
    total = input_pipeline.num_examples(
        tfrecord_dir,
        split,
        label_set=label_set,
        folds=None if fold is None else [fold],
        every=every,
    )
    return embedder(ds, total=math.ceil(total / jax.process_count()), desc=desc)


def _head_embedder(config, tfrecord_dir: str, mesh, model, plan: StagePlan) -> Embedder:
    """An Embedder that also keeps the head's top `eval.head_top_k` landmarks."""
    from gld_jax.data import input_pipeline

    return Embedder(
        model,
        mesh,
        head_k=config.eval.head_top_k,
        head_landmark_ids=input_pipeline.landmark_ids(tfrecord_dir, plan.label_set),
    )


def _gap_of(emb: EmbeddingSet, labels: np.ndarray, conf: np.ndarray) -> float:
    predictions = {i: (int(lab), float(c)) for i, lab, c in zip(emb.ids, labels, conf, strict=True)}
    solution = {i: {int(lab)} for i, lab in zip(emb.ids, emb.labels, strict=True)}
    return global_average_precision(predictions, solution)


def head_validation_gap(config, tfrecord_dir: str, plan: StagePlan, embedder: Embedder) -> float:
    """The recipe's validation: GAP of the head's top class (max over sub-centres)
    with its cosine as confidence, for every `val_every`-th held-out image of
    the stage's label set. Costs one forward pass over those images only."""
    held_out, _ = _eval_split(
        config,
        tfrecord_dir,
        plan,
        "train",
        embedder,
        f"validate stage {plan.index} (head)",
        fold=config.fold,
        every=config.val_every,
    )
    return _gap_of(held_out, *predict_head(held_out.head_labels, held_out.head_scores))


def retrieval_validation_gap(config, tfrecord_dir: str, plan: StagePlan, embedder) -> float:
    """GAP of top-1 retrieval for every `val_every`-th image of the held-out fold,
    against the training folds' images of the stage's label set. Embeds every
    training image of the stage."""
    train_set, aux = _eval_split(
        config, tfrecord_dir, plan, "train", embedder, f"validate stage {plan.index} (retrieval)"
    )
    in_set = aux["label"] >= 0
    held_out = in_set & (aux["fold"] == config.fold)
    queries = train_set.select(np.flatnonzero(held_out)[:: config.val_every])
    ev = evaluate_retrieval(
        queries,
        index=train_set.select(in_set & ~held_out),
        mode="top1",
        num_neighbors=1,
        index_params=index_params(config),
    )
    return _gap_of(queries, ev.labels, ev.confidences)


def index_params(config) -> dict:
    """build_index's keywords from `config.eval`: the search and ScaNN's threshold."""
    e = config.eval
    return {
        "brute_force_threshold": e.brute_force_threshold,
        "search": e.search,
        "search_dtype": e.search_dtype,
        "search_recall": float(e.search_recall),
    }


def validation_gaps(config, tfrecord_dir: str, plan: StagePlan, embedder) -> dict[str, float]:
    """{"head": GAP, "retrieval": GAP} for the methods `eval.validation` names."""
    methods = (
        ("head", "retrieval") if config.eval.validation == "both" else (config.eval.validation,)
    )
    if config.fold < 0:  # no held-out fold
        return {m: float("nan") for m in methods}
    fns = {"head": head_validation_gap, "retrieval": retrieval_validation_gap}
    return {m: fns[m](config, tfrecord_dir, plan, embedder) for m in methods}


def embeddings_dir(workdir: str) -> str:
    return os.path.join(workdir, "embeddings")


def embed_splits(
    config, tfrecord_dir: str, plan: StagePlan, workdir: str, embedder: Embedder
) -> None:
    """Writes <workdir>/embeddings/{train,test}/part-<process>.npz, L2-normalised,
    in `eval.embedding_dtype`, each row with the head's top `eval.head_top_k`
    landmarks and cosines. The train set (the retrieval index) holds the
    labelled images of `eval.index` (see the config reference).

    Each process writes its own shard (atomically); `shards.json` names the
    process count, so the folder loads as one set only when every process's
    shard is there. A split is skipped (resume) only when all its shards exist:
    every process must join the sharded embedding step, so the decision has to
    be the same on all of them (the workdir is shared, as for checkpoints)."""
    dtype = np.dtype(config.eval.get("embedding_dtype", "float32"))
    for split in ("train", "test"):
        directory = os.path.join(embeddings_dir(workdir), split)
        if jax.process_index() == 0:
            declare_shard_set(directory, jax.process_count())
        if all(fs.exists(shard_path(directory, p)) for p in range(jax.process_count())):
            continue
        path = shard_path(directory, jax.process_index())
        label_set = config.eval.index if split == "train" else plan.label_set
        emb, aux = _eval_split(
            config, tfrecord_dir, plan, split, embedder, f"embed {split}", label_set=label_set
        )
        if split == "train":
            emb = emb.select(aux["label"] >= 0)
        save_embeddings(path, emb, dtype=dtype)


# The summary's ladder of prediction modes, from the classifier alone to the
# recipe's blend with the 1st place's non-landmark re-ranking.
LADDER = (
    ("head", "head", {}),
    ("top1", "top1", {}),
    ("topk_cos", "blend", {"head_power": 0.0}),
    ("blend", "blend", {}),
    ("blend_rerank", "blend_rerank", {}),
)


def evaluate(config, workdir: str) -> dict:
    """Retrieval over the saved embeddings -> submission.csv (mode
    `eval.prediction`) and, when the data dir has the solution CSV, GAP of every
    mode of :data:`LADDER` and an HTML report in <workdir>/report."""
    index = load_embeddings(os.path.join(embeddings_dir(workdir), "train"))
    queries = load_embeddings(os.path.join(embeddings_dir(workdir), "test"))
    data_dir, tfrecord_dir = resolve_dirs(config, workdir)
    solution_path = os.path.join(data_dir, SOLUTION_CSV)
    has_solution = fs.exists(solution_path)
    nonlandmark, no_rerank = run_nonlandmark_set(config, queries, solution_path, has_solution)
    if nonlandmark is None and config.eval.prediction in RERANK_MODES:
        raise ValueError(
            f"eval.prediction={config.eval.prediction} needs a non-landmark set: {no_rerank}"
        )
    k = config.eval.num_neighbors
    searcher, labelled = build_labelled_index(index, k, **index_params(config))
    common = dict(
        searcher=searcher,
        index_params=index_params(config),  # the non-landmark index's search
        index_ids=labelled.ids,
        index_labels=labelled.labels,
        num_neighbors=k,
        nonlandmark=nonlandmark,
        nonlandmark_neighbors=config.eval.nonlandmark_neighbors,
        sim_power=config.eval.sim_power,
        head_power=config.eval.head_power,
    )
    main_ev = evaluate_retrieval(queries, mode=config.eval.prediction, **common)
    submission = os.path.join(workdir, "submission.csv")
    write_submission(submission, list(queries.ids), main_ev.labels, main_ev.confidences)
    out: dict = {
        "submission": submission,
        "prediction": config.eval.prediction,
        "num_queries": len(queries),
        "index_size": len(labelled),
    }
    if not has_solution:
        return out
    if no_rerank and config.eval.nonlandmark_usage:
        out["rerank_skipped"] = no_rerank
        log.warning("non-landmark re-rank skipped: %s", no_rerank)
    for name, value in gap_scores(main_ev, solution_path).items():
        # "GAP" -> gap, "GAP/Public" -> gap_public (only with a Usage column)
        out[name.lower().replace("/", "_")] = round(value, 4)
    neighbors = (main_ev.neighbor_rows, main_ev.neighbor_sims)
    solution = read_solution(solution_path)
    ladder = {}
    for row, mode, extra in LADDER:
        if mode in RERANK_MODES and nonlandmark is None:
            continue
        if mode == config.eval.prediction and not extra:
            ev = main_ev  # the submission's own rung: already scored
        else:
            ev = evaluate_retrieval(queries, mode=mode, neighbors=neighbors, **{**common, **extra})
        ladder[row] = {n: round(v, 4) for n, v in gap_scores(ev, solution_path).items()}
        right = correct_mask(ev.query_ids.tolist(), ev.labels, solution)
        ladder[row]["AUC"] = round(ranking_auc(ev.confidences, right), 4)
    out["ladder"] = ladder
    out["chance_gap"] = round(_chance_gap(index, solution_path), 4)
    from gld_jax.retrieval.report import write_report

    out["report"] = write_report(
        os.path.join(workdir, "report"),
        main_ev,
        tfrecord_dir=tfrecord_dir,
        solution_path=solution_path,
        title=f"{config.model.backbone}, {config.eval.prediction}",
    )
    return out


def run_nonlandmark_set(
    config, queries: EmbeddingSet, solution_path: str, has_solution: bool
) -> tuple[EmbeddingSet | None, str]:
    """(the re-rank modes' non-landmark set, "") or (None, why there is none).

    The set is the test images the solution lists without a landmark in the
    Usage `eval.nonlandmark_usage`, so the re-rank is judged on the other Usage
    only. A solution without a Usage column (a user's own held-out rows) has
    no rows to spare: taking its non-landmarks would judge the re-rank on the
    very images it learnt from, so there is then no set."""
    usage = config.eval.nonlandmark_usage
    if not usage:
        return None, "no non-landmark set configured (eval.nonlandmark_usage)"
    if not has_solution:
        return None, f"no solution CSV at {solution_path} to take the {usage} non-landmarks from"
    if not solution_has_usage(solution_path):
        return None, (
            f"{solution_path} has no Usage column, so no {usage} rows can be set aside "
            "as the non-landmark set without judging the re-rank on them"
        )
    nonlandmark = select_nonlandmarks(queries, solution_path, usage)
    if len(nonlandmark) == 0:
        return None, f"the solution lists no {usage} test image without a landmark"
    return nonlandmark, ""


def ladder_table(ladder: dict, nonlandmark_usage: str = "", rerank_skipped: str = "") -> str:
    """The summary's GAP ladder as an aligned text table."""
    names = {
        "head": "head only",
        "top1": "top-1 neighbour",
        "topk_cos": "top-k cos^a",
        "blend": "blend cos^a x head^b",
        "blend_rerank": "blend + non-landmark re-rank",
    }
    cols = ["GAP", "GAP/Public", "GAP/Private", "AUC"]
    lines = [f"{'prediction':<30}" + "".join(f"{c:>13}" for c in cols)]
    for row, gaps in ladder.items():
        cells = "".join(f"{gaps[c]:>13.4f}" if c in gaps else f"{'-':>13}" for c in cols)
        lines.append(f"{names.get(row, row):<30}{cells}")
    if "blend_rerank" in ladder and nonlandmark_usage:
        lines.append(
            f"(the re-rank's non-landmark set is the {nonlandmark_usage} non-landmarks: "
            f"judge it on the other Usage)"
        )
    if rerank_skipped:
        lines.append(f"(blend + non-landmark re-rank skipped: {rerank_skipped})")
    lines.append("(AUC: how well the confidence ranks right predictions above the rest)")
    return "\n".join(lines)


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
    if jax.process_index() == 0:
        # What recognize and export read to rebuild this run's model from --workdir alone.
        save_run_config(workdir, config)
    tfrecord_dir = prepare_shared_data(config, workdir)

    if mode in ("all", "train", "embed"):
        # One compiled embedding step per stage, shared by its validation and,
        # for the final stage, the embedding phase (the model is the same).
        embedders: dict[int, Embedder] = {}

        def embedder_for(model, plan):
            if plan.index not in embedders:
                embedders.clear()
                embedders[plan.index] = _head_embedder(config, tfrecord_dir, mesh, model, plan)
            return embedders[plan.index]

        validate_fn = None
        if mode != "embed" and config.eval.validate:

            def validate_fn(model, plan):
                return validation_gaps(config, tfrecord_dir, plan, embedder_for(model, plan))

        result = train(
            config,
            workdir=workdir,
            tfrecord_dir=tfrecord_dir,
            mesh=mesh,
            batches=host_batches(config, tfrecord_dir),
            validate_fn=validate_fn,
            stop_after_steps=stop_after_steps,
        )
        summary.update(
            steps_run=result.steps_run,
            total_steps=result.plans[-1].last_step,
            train_seconds=round(result.train_seconds, 1),
            validation_gap=[round(g, 4) for g in result.validation_gap],
            validation=[{k: round(v, 4) for k, v in v.items()} for v in result.validation],
        )
        if not result.complete:
            summary["stopped_at_step"] = result.global_step
            return summary
        if mode in ("all", "embed"):
            final = result.plans[-1]
            embed_splits(config, tfrecord_dir, final, workdir, embedder_for(result.model, final))
            if jax.process_count() > 1:
                # Process 0 evaluates from every process's shard: all must be written.
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("embeddings written")
    if mode in ("all", "evaluate") and jax.process_index() == 0:
        summary.update(evaluate(config, workdir))
    return summary
