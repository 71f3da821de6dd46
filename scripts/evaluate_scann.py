#!/usr/bin/env python
"""Ensemble retrieval evaluation; the same CLI as `python -m gld_jax.retrieval.evaluate`.

    python scripts/evaluate_scann.py --index A.npz [B.npz ...] \
        --queries A_test.npz [B_test.npz ...] \
        [--weights 1 1] [--mode top1|knn_vote|nonlandmark_rerank] [--nonlandmark N.npz ...] \
        [--solution recognition_solution_v2.1.csv] --output submission.csv [--report DIR]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gld_jax.retrieval.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
