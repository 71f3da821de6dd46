"""What merging the models' head top-k lists costs against exact head averaging.

    .venv/bin/python scripts/bench/head_merge.py --index A/train B/train \\
        --queries A/test B/test --solution SOLUTION_CSV [--k 1 3 5 10]

The query sets must have been embedded with a head list of every class
(`--config.eval.head_top_k` >= the number of classes): then the mean of the full
lists is the exact ensemble head, and truncating each model's list to k before
merging (gld_jax.retrieval.ensemble.merge_head_lists) is what a run with
`head_top_k=k` stores. Prints, per k, the blend's and the head-only GAP and the
share of queries whose head top-1 differs from the exact one.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from gld_jax.retrieval.embeddings import EmbeddingSet  # noqa: E402
from gld_jax.retrieval.ensemble import merge_head_lists  # noqa: E402
from gld_jax.retrieval.evaluate import evaluate_retrieval, gap_scores, load_ensemble  # noqa: E402


def with_head(emb: EmbeddingSet, labels: np.ndarray, scores: np.ndarray) -> EmbeddingSet:
    return EmbeddingSet(emb.ids, emb.embeddings, emb.labels, labels, scores)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--index", nargs="+", required=True)
    p.add_argument("--queries", nargs="+", required=True)
    p.add_argument("--solution", required=True)
    p.add_argument("--k", nargs="+", type=int, default=[1, 3, 5, 10])
    args = p.parse_args()
    from gld_jax.retrieval.embeddings import load_embeddings

    index = load_ensemble(args.index, None)
    queries = load_ensemble(args.queries, None)
    per_model = [load_embeddings(q) for q in args.queries]
    # Align every model's rows to the ensemble's order.
    pos = [{i: n for n, i in enumerate(m.ids.tolist())} for m in per_model]
    rows = [np.array([d[i] for i in queries.ids.tolist()]) for d in pos]
    labels = [m.head_labels[r] for m, r in zip(per_model, rows, strict=True)]
    scores = [m.head_scores[r] for m, r in zip(per_model, rows, strict=True)]
    full = min(x.shape[1] for x in labels)
    exact_l, exact_s = merge_head_lists(labels, scores)  # every class listed: exact
    base = evaluate_retrieval(with_head(queries, exact_l, exact_s), index=index, mode="blend")
    neighbors = (base.neighbor_rows, base.neighbor_sims)
    print(f"{len(per_model)} models, {len(queries)} queries, {full} classes listed per model")
    print(f"{'head lists':>14} {'blend GAP':>10} {'head GAP':>9} {'top-1 differs':>14}")
    for k in [*args.k, full]:
        if k == full:
            lab, sc, name = exact_l, exact_s, "exact"
        else:
            lab, sc = merge_head_lists([x[:, :k] for x in labels], [x[:, :k] for x in scores])
            name = f"top-{k}"
        q = with_head(queries, lab, sc)
        gaps = {}
        for mode in ("blend", "head"):
            ev = evaluate_retrieval(q, searcher=None, index=index, mode=mode, neighbors=neighbors)
            gaps[mode] = gap_scores(ev, args.solution)["GAP"]
        differs = float(np.mean(lab[:, 0] != exact_l[:, 0]))
        print(f"{name:>14} {gaps['blend']:>10.4f} {gaps['head']:>9.4f} {differs:>14.3f}")


if __name__ == "__main__":
    main()
