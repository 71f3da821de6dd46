"""Standalone retrieval evaluation: ensemble, ScaNN, prediction, submission, GAP.

(~450 lines: evaluate_retrieval and the CLI around it; the parts live in their modules.)

    python -m gld_jax.retrieval.evaluate \\
        --index runs/a/embeddings/train runs/b/embeddings/train \\
        --queries runs/a/embeddings/test runs/b/embeddings/test --weights 1 1 \\
        --mode blend_rerank --nonlandmark nl_a.npz nl_b.npz \\
        --solution data/recognition_solution_v2.1.csv --output submission.csv \\
        [--report report/ --tfrecord_dir runs/a/tfrecords] [--save_index DIR | --load_index DIR]

(``scripts/evaluate_scann.py`` is the same CLI.) With ``--solution`` it prints
``GAP <value>`` and ``GAP/Public``, ``GAP/Private`` lines (the format of
``python -m gld_jax.metrics.gap``) and a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from gld_jax.retrieval.accelerator_search import SEARCHES
from gld_jax.retrieval.embeddings import EmbeddingSet, load_embeddings
from gld_jax.retrieval.ensemble import combine_embedding_sets, model_means
from gld_jax.retrieval.ensemble_config import (
    config_to_args,
    load_ensemble_config,
    split_config_args,
)
from gld_jax.retrieval.evaluation import Evaluation, gap_scores
from gld_jax.retrieval.predict import (
    predict_blend,
    predict_head,
    predict_knn_vote,
    predict_top1,
)
from gld_jax.retrieval.rerank import (
    nonlandmark_similarity,
    predict_nonlandmark_rerank,
    rescored_neighbors,
)
from gld_jax.retrieval.saved_index import load_labelled_index, save_labelled_index
from gld_jax.retrieval.searchers import Searcher, build_index
from gld_jax.retrieval.submission import write_submission
from gld_jax.utils import fs
from gld_jax.utils.cli import quiet_tensorflow

# build_index's keywords that choose the search (the rest are ScaNN's).
SEARCH_KEYS = ("search", "search_dtype", "search_recall")

__all__ = ["Evaluation", "build_labelled_index", "evaluate_retrieval", "load_ensemble", "main"]

MODES = ("top1", "knn_vote", "nonlandmark_rerank", "head", "blend", "blend_rerank")
HEAD_MODES = ("head", "blend", "blend_rerank")  # need the queries' head top-k lists
RERANK_MODES = ("nonlandmark_rerank", "blend_rerank")  # need a non-landmark set


def load_ensemble(
    paths: Sequence[str],
    weights: Sequence[float] | None,
    means: Sequence[np.ndarray] | None = None,
) -> EmbeddingSet:
    """Loads one embedding set per model and combines them (see ensemble.py)."""
    return combine_embedding_sets([load_embeddings(p) for p in paths], weights, means)


def build_labelled_index(
    index: EmbeddingSet, num_neighbors: int, **index_params
) -> tuple[Searcher, EmbeddingSet]:
    """(searcher over the rows with a label >= 0, those rows); keyword arguments
    go to :func:`gld_jax.retrieval.index.build_index` (the search and its parameters).

    Raises:
      ValueError: no row has a label.
    """
    labelled = index.select(index.labels >= 0)
    if len(labelled) == 0:
        raise ValueError("the index has no labelled rows")
    searcher = build_index(
        np.asarray(labelled.embeddings, np.float32), num_neighbors=num_neighbors, **index_params
    )
    return searcher, labelled


def evaluate_retrieval(
    queries: EmbeddingSet,
    *,
    index: EmbeddingSet | None = None,
    searcher: Searcher | None = None,
    index_ids: np.ndarray | None = None,
    index_labels: np.ndarray | None = None,
    mode: str = "top1",
    num_neighbors: int = 5,
    nonlandmark: EmbeddingSet | None = None,
    nonlandmark_neighbors: int = 10,
    index_params: dict | None = None,
    sim_power: float = 9.0,
    head_power: float = 10.0,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evaluation:
    """Searches every query in the index and predicts a landmark per query.

    Args:
      queries: ``[Q, D]`` L2-normalised query embeddings (with the head's top-k
        lists for the modes ``head``, ``blend`` and ``blend_rerank``).
      index: labelled ``[N, D]`` embeddings (rows with label < 0 are dropped);
        or give a prebuilt ``searcher`` with its ``index_ids``/``index_labels``.
      mode: one of :data:`MODES` (see the README's "Prediction modes").
      num_neighbors: k of the index search (the blend's K).
      nonlandmark: ``[M, D]`` non-landmark embeddings (the re-rank modes only).
      nonlandmark_neighbors: k of B and C (mean cosine to the k nearest non-landmarks).
      index_params: keywords of :func:`gld_jax.retrieval.index.build_index`: the
        search ("scann", "exact_cpu", "accelerator", "auto"), its dtype and
        recall, and ScaNN overrides; the non-landmark index takes the same search.
      sim_power, head_power: the blend's exponents a and b.
      neighbors: ``(rows [Q, k], sims [Q, k])`` of an earlier search of the same
        queries in the same searcher, to score another mode without searching again.

    Returns:
      An :class:`Evaluation`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {list(MODES)}")
    if mode in RERANK_MODES and (nonlandmark is None or len(nonlandmark) == 0):
        raise ValueError(f"mode {mode} needs a non-empty non-landmark set")
    if mode in HEAD_MODES and not queries.has_head:
        raise ValueError(
            f"mode {mode} needs the head's top-k lists in the query set: re-embed the "
            "queries (python -m gld_jax.main --mode embed) or pick a mode without the head "
            "(top1, knn_vote, nonlandmark_rerank)"
        )
    timings: dict = {}
    if searcher is None:
        if index is None:
            raise ValueError("give index embeddings or a searcher")
        t0 = time.perf_counter()
        searcher, index = build_labelled_index(index, num_neighbors, **(index_params or {}))
        timings["build_s"] = round(time.perf_counter() - t0, 3)
        index_ids, index_labels = index.ids, index.labels
    if searcher.dim != queries.embeddings.shape[1]:
        raise ValueError(
            f"dim mismatch: index {searcher.dim}, queries {queries.embeddings.shape[1]}"
        )
    if neighbors is None:
        t0 = time.perf_counter()
        rows, sims = searcher.search(np.asarray(queries.embeddings, np.float32), num_neighbors)
        timings["search_s"] = round(time.perf_counter() - t0, 3)
    else:
        rows, sims = neighbors
    nn_labels = np.asarray(index_labels)[rows]
    if mode in RERANK_MODES:
        t0 = time.perf_counter()
        b, c = _nonlandmark_penalties(
            searcher,
            rows,
            queries,
            nonlandmark,
            nonlandmark_neighbors,
            index_ids,
            {k: v for k, v in (index_params or {}).items() if k in SEARCH_KEYS},
        )
        timings["rerank_s"] = round(time.perf_counter() - t0, 3)
    if mode == "top1":
        labels, conf = predict_top1(nn_labels, sims)
    elif mode == "knn_vote":
        labels, conf = predict_knn_vote(nn_labels, sims)
    elif mode == "nonlandmark_rerank":
        labels, conf = predict_nonlandmark_rerank(nn_labels, sims, b, c)
    elif mode == "head":
        labels, conf = predict_head(queries.head_labels, queries.head_scores)
    else:
        # The re-ranked score A - B - C of each neighbour in place of its cosine.
        blend_sims = sims if mode == "blend" else rescored_neighbors(sims, b) - c[:, None]
        labels, conf = predict_blend(
            nn_labels,
            blend_sims,
            queries.head_labels,
            queries.head_scores,
            sim_power=sim_power,
            head_power=head_power,
        )
    return Evaluation(
        query_ids=queries.ids,
        query_labels=queries.labels,
        labels=np.asarray(labels, np.int64),
        confidences=np.asarray(conf, np.float32),
        neighbor_rows=rows,
        neighbor_sims=sims,
        index_ids=np.asarray(index_ids),
        index_labels=np.asarray(index_labels, np.int64),
        timings=timings,
    )


def _nonlandmark_penalties(
    searcher: Searcher,
    rows: np.ndarray,
    queries: EmbeddingSet,
    nonlandmark: EmbeddingSet,
    k: int,
    index_ids: np.ndarray,
    search: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """(B [Q, k] of each retrieved index row, C [Q] of each query): mean cosines
    to the k nearest non-landmark images (see gld_jax.retrieval.rerank), searched
    with `search` (build_index's search keywords)."""
    nl_index = build_index(np.asarray(nonlandmark.embeddings, np.float32), **search)
    # B only for the index rows that some query retrieved: the rest never matter.
    used, inverse = np.unique(rows, return_inverse=True)
    b_used = nonlandmark_similarity(
        nl_index,
        searcher.embeddings[used],
        k,
        ids=np.asarray(index_ids)[used],
        nonlandmark_ids=nonlandmark.ids,
    )
    c = nonlandmark_similarity(
        nl_index, queries.embeddings, k, ids=queries.ids, nonlandmark_ids=nonlandmark.ids
    )
    return b_used[inverse.reshape(rows.shape)], c


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gld_jax.retrieval.evaluate",
        description="Ensemble retrieval with ScaNN -> Kaggle submission, GAP and a report.",
    )
    p.add_argument(
        "--config",
        help="an ensemble config file (configs/ensemble.py) naming the runs; "
        "--config.KEY=VALUE overrides its keys, other flags override it",
    )
    p.add_argument("--index", nargs="+", help="index embedding set per model (.npz or folder)")
    p.add_argument("--queries", nargs="+", required=True, help="query (test) set per model")
    p.add_argument("--weights", nargs="+", type=float, help="weight per model (default 1 each)")
    p.add_argument("--mode", default="blend", choices=MODES, help="see README: Prediction modes")
    p.add_argument("--num_neighbors", type=int, default=5, help="k of the index search")
    p.add_argument(
        "--sim_power", type=float, default=9.0, help="blend: exponent a of each neighbour's cosine"
    )
    p.add_argument(
        "--head_power", type=float, default=10.0, help="blend: exponent b of the head's cosine"
    )
    p.add_argument("--nonlandmark", nargs="+", help="non-landmark embedding set per model")
    p.add_argument("--nonlandmark_neighbors", type=int, default=10, help="k of B and C")
    p.add_argument(
        "--center",
        action="store_true",
        help="subtract each model's mean index embedding before re-normalising",
    )
    p.add_argument("--solution", help="recognition_solution_v2.1.csv: print GAP lines")
    p.add_argument("--output", required=True, help="submission CSV to write")
    p.add_argument("--report", help="folder for an HTML report (needs --tfrecord_dir for images)")
    p.add_argument("--tfrecord_dir", help="TFRecords with the train and test images (report)")
    p.add_argument("--report_queries", type=int, default=24, help="queries in the report's grid")
    p.add_argument("--save_index", help="folder to save the built index into")
    p.add_argument("--load_index", help="folder of a saved index (then --index is not needed)")
    p.add_argument(
        "--search",
        default="scann",
        choices=SEARCHES,
        help="scann (CPU, default), exact_cpu, accelerator (matmul on the TPU/GPU devices) "
        "or auto (the accelerator when present and the index fits, else scann)",
    )
    p.add_argument(
        "--search_dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="accelerator search: the index's dtype on the devices",
    )
    p.add_argument(
        "--search_recall",
        type=float,
        default=1.0,
        help="accelerator search: 1.0 = exact top-k; below 1, lax.approx_max_k's recall target",
    )
    p.add_argument("--brute_force_threshold", type=int, default=20_000)
    p.add_argument("--num_leaves", type=int)
    p.add_argument("--leaves_to_search", type=int)
    p.add_argument("--reorder", type=int)
    p.add_argument("--training_sample_size", type=int)
    return p


def _check_args(args: argparse.Namespace) -> None:
    n = len(args.queries)
    if args.load_index is None and not args.index:
        raise ValueError("give --index (one embedding set per model) or --load_index")
    if args.load_index is not None and args.save_index is not None:
        raise ValueError("--save_index and --load_index exclude each other")
    if args.index and len(args.index) != n:
        raise ValueError(f"{len(args.index)} --index sets but {n} --queries sets (one per model)")
    if args.weights is not None and len(args.weights) != n:
        raise ValueError(f"{len(args.weights)} --weights for {n} models")
    if args.mode in RERANK_MODES:
        if not args.nonlandmark:
            raise ValueError(f"--mode {args.mode} needs --nonlandmark (one set per model)")
        if len(args.nonlandmark) != n:
            raise ValueError(f"{len(args.nonlandmark)} --nonlandmark sets for {n} models")
    if args.num_neighbors < 1 or args.nonlandmark_neighbors < 1:
        raise ValueError("--num_neighbors and --nonlandmark_neighbors must be >= 1")
    if args.sim_power < 0 or args.head_power < 0:
        raise ValueError("--sim_power and --head_power must be >= 0")
    if not 0 < args.search_recall <= 1:
        raise ValueError(f"--search_recall must be in (0, 1], got {args.search_recall}")
    if args.report and not args.tfrecord_dir:
        raise ValueError("--report needs --tfrecord_dir (the images come from the TFRecords)")
    path_flags = ("index", "queries", "nonlandmark", "solution", "output", "report")
    for flag in (*path_flags, "tfrecord_dir", "save_index", "load_index"):
        value = getattr(args, flag) or []
        for path in value if isinstance(value, list) else [value]:
            if problem := fs.unsupported_scheme(path, f"--{flag}"):
                raise ValueError(problem)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow()  # before ScaNN or the report import TensorFlow
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config_path, overrides, rest = split_config_args(argv)
        if config_path is not None:
            # The config's flags first: flags given on the command line win.
            rest = config_to_args(load_ensemble_config(config_path, overrides)) + rest
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = _parser().parse_args(rest)
    try:
        _check_args(args)
        means = None
        index = saved = None
        search = {k: getattr(args, k) for k in SEARCH_KEYS}
        if args.load_index:
            saved = load_labelled_index(
                args.load_index,
                num_neighbors=args.num_neighbors,
                leaves_to_search=args.leaves_to_search,
                reorder=args.reorder,
                **search,
            )
            if args.center != (saved.means is not None):
                how = "without" if args.center else "with"
                raise ValueError(
                    f"{args.load_index} was saved {how} --center; search it {how} --center too"
                )
            means = saved.means
        else:
            index_sets = [load_embeddings(p) for p in args.index]
            if args.center:
                means = model_means([s.select(s.labels >= 0) for s in index_sets])
            index = combine_embedding_sets(index_sets, args.weights, means)
        queries = load_ensemble(args.queries, args.weights, means)
        nonlandmark = (
            load_ensemble(args.nonlandmark, args.weights, means)
            if args.mode in RERANK_MODES
            else None
        )
        index_params = {
            k: getattr(args, k)
            for k in ("num_leaves", "leaves_to_search", "reorder", "training_sample_size")
            if getattr(args, k) is not None
        }
        common = dict(
            mode=args.mode,
            num_neighbors=args.num_neighbors,
            sim_power=args.sim_power,
            head_power=args.head_power,
            nonlandmark=nonlandmark,
            nonlandmark_neighbors=args.nonlandmark_neighbors,
        )
        common["index_params"] = search  # the non-landmark index's search
        timings = {}
        if saved is not None:
            searcher, ids, labels = saved.searcher, saved.ids, saved.labels
        else:
            t0 = time.perf_counter()
            searcher, labelled = build_labelled_index(
                index,
                args.num_neighbors,
                brute_force_threshold=args.brute_force_threshold,
                **index_params,
                **search,
            )
            timings["build_s"] = round(time.perf_counter() - t0, 3)
            ids, labels = labelled.ids, labelled.labels
            if args.save_index:
                save_labelled_index(args.save_index, searcher, labelled, means)
        ev = evaluate_retrieval(
            queries, searcher=searcher, index_ids=ids, index_labels=labels, **common
        )
        ev.timings = {**timings, **ev.timings}
        write_submission(args.output, ev.query_ids.tolist(), ev.labels, ev.confidences)
        scores = gap_scores(ev, args.solution) if args.solution else {}
        for key, value in scores.items():
            print(f"{key} {value:.6f}")
        if args.report:
            from gld_jax.retrieval.report import write_report

            write_report(
                args.report,
                ev,
                solution_path=args.solution,
                tfrecord_dir=args.tfrecord_dir,
                num_queries=args.report_queries,
                title=f"{args.mode}, {len(args.queries)} model(s)",
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except fs.path_errors() as err:  # a missing or forbidden file, local or gs://
        print(f"error: {fs.error_line(err)}", file=sys.stderr)
        return 2
    summary = {
        "mode": args.mode,
        "models": len(args.queries),
        "queries": len(ev.query_ids),
        "index_size": len(ev.index_ids),
        "submission": args.output,
        **{k.lower().replace("/", "_"): round(v, 6) for k, v in scores.items()},
        **ev.timings,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
