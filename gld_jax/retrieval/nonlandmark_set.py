"""Cut a non-landmark embedding set out of a labelled query set.

    python -m gld_jax.retrieval.nonlandmark_set --embeddings runs/demo/embeddings/test \\
        --solution runs/demo/data/recognition_solution_v2.1.csv --usage Public \\
        --output runs/demo/embeddings/nonlandmark.npz

Keeps the images the solution CSV lists with no landmark (optionally one Usage
only). On GLDv2 the 1st-place team took such images from an earlier test set;
on a single test set, take them from the Public rows and judge the re-ranking on
the Private rows only, which the non-landmark set has never seen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from gld_jax.retrieval.embeddings import EmbeddingSet, load_embeddings, save_embeddings
from gld_jax.utils.cli import quiet_tensorflow

__all__ = ["select_nonlandmarks"]


def select_nonlandmarks(
    emb: EmbeddingSet, solution_path: str, usage: str | None = None
) -> EmbeddingSet:
    """Rows of ``emb`` whose id the solution lists with an empty landmark set
    (``usage``: ``Public``/``Private``/``Ignored`` rows only, or all)."""
    from gld_jax.metrics import read_solution

    truth = read_solution(solution_path, usage=usage)
    keep = np.array([i in truth and not truth[i] for i in emb.ids.tolist()], bool)
    return emb.select(keep)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow()
    p = argparse.ArgumentParser(prog="python -m gld_jax.retrieval.nonlandmark_set")
    p.add_argument("--embeddings", required=True, help="embedding set (.npz or folder)")
    p.add_argument("--solution", required=True, help="recognition_solution_v2.1.csv")
    p.add_argument("--usage", choices=("Public", "Private", "Ignored"), help="only these rows")
    p.add_argument("--output", required=True, help=".npz to write")
    args = p.parse_args(argv)
    try:
        emb = load_embeddings(args.embeddings)
        nl = select_nonlandmarks(emb, args.solution, args.usage)
        if len(nl) == 0:
            raise ValueError("no non-landmark image of the solution is in the embedding set")
        save_embeddings(args.output, nl, dtype=emb.embeddings.dtype)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(nl)} non-landmark images -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
