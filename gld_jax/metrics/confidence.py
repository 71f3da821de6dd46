"""Do confidences rank? How well a prediction's confidence separates right answers
from the rest (wrong landmarks and non-landmark images).

GAP rewards exactly this ranking: every non-landmark or wrong prediction ranked
above a right one lowers the precision at that right one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

__all__ = ["correct_mask", "ranking_auc"]


def correct_mask(
    ids: Collection[str], labels: np.ndarray, solution: Mapping[str, Collection[int]]
) -> np.ndarray:
    """``[Q]`` bool: the predicted landmark is one of the image's true landmarks
    (False for non-landmarks and for ids the solution does not list)."""
    return np.array(
        [int(lab) in solution.get(i, ()) for i, lab in zip(ids, labels, strict=True)], bool
    )


def ranking_auc(confidences: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of ``confidences`` for telling ``correct`` rows
    from the rest: the chance that a random right prediction is more confident
    than a random other one (ties count half). 0.5 = confidences carry no
    information, 1 = every right prediction outranks every other. NaN when
    either group is empty.
    """
    conf = np.asarray(confidences, np.float64)
    correct = np.asarray(correct, bool)
    if conf.shape != correct.shape or conf.ndim != 1:
        raise ValueError(f"confidences {conf.shape} and correct {correct.shape} must be [Q]")
    pos, neg = conf[correct], conf[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U from average ranks (ties share their mean rank).
    order = np.argsort(conf, kind="stable")
    ranks = np.empty(len(conf))
    sorted_conf = conf[order]
    start = 0
    for end in range(1, len(conf) + 1):
        if end == len(conf) or sorted_conf[end] != sorted_conf[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # 1-based mean rank
            start = end
    u = ranks[correct].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))
