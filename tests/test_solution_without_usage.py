"""A solution CSV with only `id,landmarks` (a user's own held-out rows, no Usage
column): the run's evaluation, its ladder and submission, the evaluation CLI and
the GAP CLI all score it, with GAP/Public and GAP/Private absent and the
re-rank rung skipped with one line saying why.

Oracle: GAP worked out by hand from the definition (see each test)."""

import json
import os

import numpy as np
import pytest

from gld_jax.config import base_config
from gld_jax.metrics import gap as gap_cli
from gld_jax.metrics import read_submission
from gld_jax.pipeline import SOLUTION_CSV, evaluate, ladder_table
from gld_jax.retrieval import evaluate as evaluate_cli
from gld_jax.retrieval.embeddings import (
    EmbeddingSet,
    declare_shard_set,
    save_embeddings,
    shard_path,
)


def _unit(rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Index: two images of landmark 10, two of 20. Queries: q1 ~ 10, q2 ~ 20, q3 a
# non-landmark nearest to 20 with a lower cosine, q4 a landmark (30) the index
# does not hold.
INDEX = EmbeddingSet(
    np.array(["a1", "a2", "b1", "b2"]),
    _unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]]),
    np.array([10, 10, 20, 20]),
    head_labels=np.array([[10, 20]] * 2 + [[20, 10]] * 2),
    head_scores=np.full((4, 2), 0.5, np.float32),
)
QUERIES = EmbeddingSet(
    np.array(["q1", "q2", "q3", "q4"]),
    _unit([[1, 0, 0], [0, 1, 0.2], [0, 0.6, 1], [0.6, 0.8, 0]]),
    np.array([10, 20, -1, 30]),
    head_labels=np.array([[10, 20], [20, 10], [20, 10], [20, 10]]),
    head_scores=np.array([[0.9, 0.1], [0.8, 0.1], [0.3, 0.1], [0.5, 0.4]], np.float32),
)
TWO_COLUMNS = "id,landmarks\nq1,10\nq2,20\nq3,\nq4,30\n"


@pytest.fixture
def workdir(tmp_path):
    """A finished run's evaluation inputs: embeddings, a data dir whose solution
    has no Usage column, and an (empty) TFRecord dir for the report."""
    for split, emb in (("train", INDEX), ("test", QUERIES)):
        directory = str(tmp_path / "embeddings" / split)
        declare_shard_set(directory, 1)
        save_embeddings(shard_path(directory, 0), emb)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / SOLUTION_CSV).write_text(TWO_COLUMNS)
    (tmp_path / "tfrecords").mkdir()
    return tmp_path


def _config(prediction="top1"):
    c = base_config()
    c.eval.prediction = prediction
    c.eval.nonlandmark_usage = "Public"  # as the demo config sets it
    c.eval.brute_force_threshold = 100  # exact search for the 4 rows
    return c


def test_run_evaluation_scores_a_solution_without_usage(workdir):
    out = evaluate(_config(), str(workdir))
    # top-1: q1 -> 10 (cos 1.0, right), q2 -> 20 (cos 0.98, right), q4 -> 20
    # (cos 0.8, wrong), q3 -> 20 (cos 0.51, non-landmark). Ranked: right, right,
    # wrong, wrong; M = 3 landmark images: GAP = (1/1 + 2/2) / 3.
    assert out["gap"] == pytest.approx(2 / 3, abs=1e-4)
    assert "gap_public" not in out and "gap_private" not in out
    assert "blend_rerank" not in out["ladder"]
    assert set(out["ladder"]) == {"head", "top1", "topk_cos", "blend"}
    assert all(set(row) == {"GAP", "AUC"} for row in out["ladder"].values())
    assert "no Usage column" in out["rerank_skipped"]
    table = ladder_table(out["ladder"], "Public", out["rerank_skipped"])
    skipped = [line for line in table.splitlines() if "re-rank skipped" in line]
    assert len(skipped) == 1 and "no Usage column" in skipped[0]
    sub = read_submission(str(workdir / "submission.csv"))
    assert {i: lab for i, (lab, _) in sub.items()} == {"q1": 10, "q2": 20, "q3": 20, "q4": 20}
    assert os.path.exists(out["report"])


def test_a_rerank_prediction_without_a_nonlandmark_set_is_one_line(workdir):
    with pytest.raises(ValueError, match="needs a non-landmark set: .* no Usage column"):
        evaluate(_config("blend_rerank"), str(workdir))


def test_evaluation_cli_and_gap_cli_score_a_solution_without_usage(workdir, capsys):
    sol = str(workdir / "data" / SOLUTION_CSV)
    rc = evaluate_cli.main(
        [
            "--index",
            str(workdir / "embeddings" / "train"),
            "--queries",
            str(workdir / "embeddings" / "test"),
            "--mode",
            "top1",
            "--solution",
            sol,
            "--output",
            str(workdir / "cli.csv"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == f"GAP {2 / 3:.6f}" and not any("Public" in line for line in lines)
    summary = json.loads(lines[-1])
    assert summary["gap"] == pytest.approx(2 / 3, abs=1e-6) and "gap_public" not in summary

    assert gap_cli.main(["--submission", str(workdir / "cli.csv"), "--solution", sol]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [f"GAP {2 / 3:.6f}"]
