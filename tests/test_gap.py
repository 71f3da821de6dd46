"""GAP: hand-computed cases from the definition, a brute-force oracle, CSV I/O, CLI."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from gld_jax.metrics import global_average_precision, read_solution, read_submission
from gld_jax.metrics.gap import main

REPO = Path(__file__).resolve().parents[1]


def _brute_force_gap(predictions, solution):
    """From the definition, written differently: build the ranked relevance list
    (ties by id via a comparison of (confidence, id) pairs, found by repeated
    selection), then P(i) as a recount over the prefix for every rank."""
    pending = [(i, p) for i, p in predictions.items() if i in solution]
    ranked = []
    while pending:
        best = pending[0]
        for cand in pending[1:]:
            if cand[1][1] > best[1][1] or (cand[1][1] == best[1][1] and cand[0] < best[0]):
                best = cand
        pending.remove(best)
        ranked.append(best)
    rel = [1 if label in solution[i] else 0 for i, (label, _) in ranked]
    m = len([i for i in solution if len(solution[i]) > 0])
    if m == 0:
        return 0.0
    total = 0.0
    for i in range(len(rel)):
        precision_i = sum(rel[: i + 1]) / (i + 1)
        total += precision_i * rel[i]
    return total / m


# ----------------------------------------------------------------------------- by hand


def test_all_correct_is_one():
    sol = {"a": {1}, "b": {2}, "c": {3}}
    pred = {"a": (1, 0.9), "b": (2, 0.5), "c": (3, 0.1)}
    # rel = 1,1,1: (1/1 + 2/2 + 3/3) / 3 = 1
    assert global_average_precision(pred, sol) == 1.0


def test_all_wrong_is_zero():
    sol = {"a": {1}, "b": {2}}
    pred = {"a": (5, 0.9), "b": (6, 0.8)}
    assert global_average_precision(pred, sol) == 0.0


def test_mixed_ranks():
    sol = {"a": {1}, "b": {2}, "c": {3}, "d": {4}}
    pred = {"a": (1, 0.9), "b": (9, 0.8), "c": (3, 0.7), "d": (4, 0.6)}
    # ranked a(rel) b(no) c(rel) d(rel): (1/1 + 2/3 + 3/4) / 4 = (12 + 8 + 9) / 12 / 4 = 29/48
    assert global_average_precision(pred, sol) == pytest.approx(29 / 48, abs=1e-12)


def test_non_landmark_predictions_ranked_above_cost_precision():
    sol = {"a": {1}, "b": {2}, "n1": set(), "n2": set()}
    pred = {"n1": (7, 0.99), "a": (1, 0.9), "n2": (7, 0.8), "b": (2, 0.7)}
    # ranked n1(no) a(rel) n2(no) b(rel); M = 2 (non-landmarks do not count in M):
    # (1/2 + 2/4) / 2 = 0.5
    assert global_average_precision(pred, sol) == pytest.approx(0.5, abs=1e-12)
    # Same predictions but non-landmarks ranked last: (1/1 + 2/2) / 2 = 1.
    low = {"n1": (7, 0.1), "a": (1, 0.9), "n2": (7, 0.05), "b": (2, 0.7)}
    assert global_average_precision(low, sol) == 1.0


def test_missing_predictions_still_count_in_m():
    sol = {"a": {1}, "b": {2}, "c": {3}, "d": {4}}
    pred = {"a": (1, 0.9)}
    # one prediction, correct, P(1) = 1; M = 4 -> 1/4
    assert global_average_precision(pred, sol) == 0.25


def test_multiple_true_landmarks_per_image():
    sol = {"a": {1, 2}, "b": {3, 4}}
    pred = {"a": (2, 0.9), "b": (5, 0.8)}
    # a correct (2 in {1,2}), b wrong: (1/1) / 2 = 0.5
    assert global_average_precision(pred, sol) == 0.5


def test_ids_not_in_solution_are_ignored():
    sol = {"a": {1}, "b": {2}}
    pred = {"zz": (9, 1.0), "a": (1, 0.9), "b": (2, 0.8)}
    # "zz" dropped before ranking: (1/1 + 2/2) / 2 = 1
    assert global_average_precision(pred, sol) == 1.0


def test_empty_solution_and_no_landmarks():
    assert global_average_precision({"a": (1, 1.0)}, {}) == 0.0
    assert global_average_precision({"a": (1, 1.0)}, {"a": set()}) == 0.0
    assert global_average_precision({}, {"a": {1}}) == 0.0


def test_ties_broken_by_id_ascending():
    sol = {"a": {1}, "b": {2}}
    # Equal confidences: order a, b regardless of dict order.
    # a wrong, b right -> ranks a(no) b(rel): (2nd rank, 1 correct) 1/2 / M=2 = 0.25
    pred1 = {"a": (9, 0.5), "b": (2, 0.5)}
    pred2 = {"b": (2, 0.5), "a": (9, 0.5)}
    assert global_average_precision(pred1, sol) == 0.25
    assert global_average_precision(pred2, sol) == 0.25


# ----------------------------------------------------------------------------- oracle


def test_matches_brute_force_on_random_cases():
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(0, 30)
        sol, pred = {}, {}
        for j in range(n):
            key = f"{rng.randrange(10**6):06x}{j}"
            sol[key] = set(rng.sample(range(6), rng.choice([0, 0, 1, 1, 1, 2])))
            if rng.random() < 0.8:
                # coarse confidences so ties are frequent
                pred[key] = (rng.randrange(6), rng.choice([0.1, 0.2, 0.5, rng.random()]))
        for j in range(rng.randint(0, 3)):  # predictions for unknown ids
            pred[f"unknown{j}"] = (1, rng.random())
        got = global_average_precision(pred, sol)
        assert got == pytest.approx(_brute_force_gap(pred, sol), abs=1e-12), trial


# ----------------------------------------------------------------------------- files, CLI


def _write(path, text):
    path.write_text(text)
    return path


def test_read_solution_and_usage(tmp_path):
    p = _write(
        tmp_path / "sol.csv",
        "id,landmarks,Usage\na,1,Public\nb,2 3,Private\nc,,Public\nd,4,Ignored\n",
    )
    assert read_solution(p) == {"a": {1}, "b": {2, 3}, "c": set()}
    assert read_solution(p, "Public") == {"a": {1}, "c": set()}
    assert read_solution(p, "Private") == {"b": {2, 3}}
    plain = _write(tmp_path / "plain.csv", "id,landmarks\na,1\nb,\n")
    assert read_solution(plain) == {"a": {1}, "b": set()}
    with pytest.raises(ValueError):
        read_solution(plain, "Public")


def test_read_submission(tmp_path):
    p = _write(tmp_path / "sub.csv", "id,landmarks\na,1 0.5\nb,\nc,7 1e-3\n")
    assert read_submission(p) == {"a": (1, 0.5), "c": (7, 0.001)}


@pytest.mark.parametrize(
    "text",
    [
        "id,landmarks\na,1\n",  # no confidence
        "id,landmarks\na,x 0.5\n",  # non-integer label
        "id,landmarks\na,1 0.5 2 0.1\n",  # two predictions
        "id,landmarks\na,1 nan\n",  # non-finite
        "id,landmarks\na,1 0.5\na,2 0.5\n",  # repeated id
        "id,landmark\na,1 0.5\n",  # bad header
        "",  # empty file
    ],
)
def test_read_submission_rejects_malformed(tmp_path, text):
    with pytest.raises(ValueError):
        read_submission(_write(tmp_path / "bad.csv", text))


def test_cli_prints_overall_and_splits(tmp_path, capsys):
    sol = _write(
        tmp_path / "sol.csv",
        "id,landmarks,Usage\na,1,Public\nb,2,Public\nc,3,Private\nd,,Private\ne,5,Ignored\n",
    )
    sub = _write(
        tmp_path / "sub.csv", "id,landmarks\na,1 0.9\nb,9 0.8\nc,3 0.7\nd,4 0.95\ne,5 1.0\n"
    )
    assert main(["--submission", str(sub), "--solution", str(sol)]) == 0
    out = capsys.readouterr().out.splitlines()
    # all scored (e Ignored): ranked d(no) a(rel) b(no) c(rel), M=3: (1/2 + 2/4)/3 = 1/3
    # Public: a(rel) b(no), M=2: (1/1)/2 = 0.5
    # Private: d(no) c(rel), M=1: (1/2)/1 = 0.5
    assert out == ["GAP 0.333333", "GAP/Public 0.500000", "GAP/Private 0.500000"]


def test_cli_errors_are_one_line_exit_2(tmp_path):
    sub = _write(tmp_path / "sub.csv", "id,landmarks\na,1 oops\n")
    sol = _write(tmp_path / "sol.csv", "id,landmarks\na,1\n")
    for args in (
        ["--submission", str(tmp_path / "missing.csv"), "--solution", str(sol)],
        ["--submission", str(sub), "--solution", str(sol)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "gld_jax.metrics.gap", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


def test_cli_subprocess_round_trip(tmp_path):
    sol = _write(tmp_path / "sol.csv", "id,landmarks\na,1\nb,2\n")
    sub = _write(tmp_path / "sub.csv", "id,landmarks\na,1 0.9\nb,\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gld_jax.metrics.gap",
            "--submission",
            str(sub),
            "--solution",
            str(sol),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    # a right at rank 1, b no prediction: 1 / M=2 = 0.5; no Usage column -> one line
    assert proc.returncode == 0 and proc.stdout == "GAP 0.500000\n" and proc.stderr == ""


def test_gap_by_usage_with_and_without_a_usage_column(tmp_path):
    # a (Public) right at 0.9, b (Private) wrong at 0.8, c (Public) right at 0.7,
    # d (Private) non-landmark predicted at 0.95, e (Ignored) never scored.
    predictions = {"a": (1, 0.9), "b": (5, 0.8), "c": (3, 0.7), "d": (9, 0.95), "e": (4, 0.99)}
    rows = [("a", "1", "Public"), ("b", "2", "Private"), ("c", "3", "Public")]
    rows += [("d", "", "Private"), ("e", "4", "Ignored")]
    with_usage = tmp_path / "with.csv"
    with_usage.write_text("id,landmarks,Usage\n" + "".join(f"{i},{lm},{u}\n" for i, lm, u in rows))
    without = tmp_path / "without.csv"
    without.write_text("id,landmarks\n" + "".join(f"{i},{lm}\n" for i, lm, _ in rows[:4]))
    from gld_jax.metrics import gap_by_usage

    # By hand. All scored rows ranked d(wrong) a(right) b(wrong) c(right):
    # (1/2 + 2/4) / 3 landmark images. Public: a, c both right: (1 + 1) / 2.
    # Private: d (wrong), b (wrong): 0.
    assert gap_by_usage(predictions, with_usage) == pytest.approx(
        {"GAP": 1 / 3, "GAP/Public": 1.0, "GAP/Private": 0.0}
    )
    assert gap_by_usage(predictions, without) == pytest.approx({"GAP": 1 / 3})
