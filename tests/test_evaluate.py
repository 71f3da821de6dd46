"""The evaluation CLI (python -m gld_jax.retrieval.evaluate): GAP lines, ensembles,
index save/load, non-landmark re-ranking, user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gld_jax.metrics import read_submission
from gld_jax.retrieval.embeddings import EmbeddingSet, save_embeddings
from gld_jax.retrieval.evaluate import main
from gld_jax.retrieval.index import build_scann_index, load_index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def tiny(tmp_path):
    """Index: a1, a2 (class 10), b1, b2 (class 20), junk (label -1, dropped).
    Queries q1..q4; top-1 cosines worked out in test_cli_gap_by_hand."""
    index = EmbeddingSet(
        np.array(["a1", "a2", "b1", "b2", "junk"]),
        _unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]]),
        np.array([10, 10, 20, 20, -1]),
    )
    queries = EmbeddingSet(
        np.array(["q1", "q2", "q3", "q4"]),
        _unit([[1, 0, 0], [0, 1, 0.5], [0, 0, 1], [0.6, 0.8, 0]]),
        np.array([10, 20, -1, 30]),
    )
    save_embeddings(str(tmp_path / "index.npz"), index)
    save_embeddings(str(tmp_path / "test.npz"), queries, dtype=np.float16)
    # Second "model": same vectors, rows in another order (aligned by id).
    perm = np.array([3, 1, 4, 0, 2])
    save_embeddings(str(tmp_path / "index_b.npz"), index.select(perm))
    save_embeddings(str(tmp_path / "test_b.npz"), queries.select(np.array([2, 0, 3, 1])))
    save_embeddings(
        str(tmp_path / "nl.npz"),
        EmbeddingSet(np.array(["n1"]), _unit([[0, 0.1, 1]]), np.array([-1])),
    )
    (tmp_path / "solution.csv").write_text(
        "id,landmarks,Usage\nq1,10,Public\nq2,20,Private\nq3,,Public\nq4,30,Private\n"
    )
    return tmp_path


def _run(capsys, *argv):
    if "--mode" not in argv:  # the cases below are worked out by hand for top-1
        argv = ("--mode", "top1", *argv)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_gap_by_hand(tiny, capsys):
    # Top-1 (junk row dropped): q1 -> a1 cos 1 (class 10, right);
    # q2=(0,1,.5)/1.118 -> b2=(0,.9,.1)/.9055: (.9+.05)/(.9055*1.118)=.938 (20, right);
    # q4=(.6,.8,0) -> b1 cos .8 (20, wrong: truth 30); q3=(0,0,1) -> b2 cos .1/.9055=.110 (wrong).
    # Ranked 1, .938, .8, .110: P = 1/1, 2/2; M = 3 landmark queries -> GAP = 2/3.
    # Public {q1, q3}: q1 first -> 1/1, M = 1 -> 1.  Private {q2, q4}: 1/1, M = 2 -> 0.5.
    rc, out, _ = _run(
        capsys,
        "--index",
        tiny / "index.npz",
        "--queries",
        tiny / "test.npz",
        "--solution",
        tiny / "solution.csv",
        "--output",
        tiny / "sub.csv",
    )
    assert rc == 0
    lines = out.splitlines()
    assert "GAP 0.666667" in lines and "GAP/Public 1.000000" in lines
    assert "GAP/Private 0.500000" in lines
    sub = read_submission(tiny / "sub.csv")
    assert {k: v[0] for k, v in sub.items()} == {"q1": 10, "q2": 20, "q3": 20, "q4": 20}
    assert sub["q2"][1] == pytest.approx(0.95 / (np.sqrt(0.82) * np.sqrt(1.25)), abs=2e-3)
    # The same numbers from the metric's own CLI reading the written CSV.
    gap_cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gld_jax.metrics.gap",
            "--submission",
            str(tiny / "sub.csv"),
            "--solution",
            str(tiny / "solution.csv"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert gap_cli.stdout.splitlines() == lines[:3]


def test_ensemble_of_identical_models_matches_single(tiny, capsys):
    args = ["--solution", tiny / "solution.csv", "--output", tiny / "ens.csv"]
    rc, out, _ = _run(
        capsys,
        "--index",
        tiny / "index.npz",
        tiny / "index_b.npz",
        "--queries",
        tiny / "test.npz",
        tiny / "test_b.npz",
        "--weights",
        1,
        2,
        *args,
    )
    assert rc == 0 and "GAP 0.666667" in out.splitlines()
    sub = read_submission(tiny / "ens.csv")
    assert sub["q4"] == (20, pytest.approx(0.8, abs=2e-3))


def test_nonlandmark_rerank_cli(tiny, capsys):
    # Non-landmark n1=(0,.1,1)/1.005 (k=1, so B and C are cosines to n1).
    # B(a1)=0, B(b1)=.1/1.005=.0995, B(b2)=(.09+.1)/(.9055*1.005)=.2088.
    # q2: b1 .894-.0995=.795 > b2 .938-.2088=.729 -> b1, class 20 (right), conf .795 - C(q2).
    rc, out, _ = _run(
        capsys,
        "--index",
        tiny / "index.npz",
        "--queries",
        tiny / "test.npz",
        "--mode",
        "nonlandmark_rerank",
        "--nonlandmark",
        tiny / "nl.npz",
        "--nonlandmark_neighbors",
        1,
        "--solution",
        tiny / "solution.csv",
        "--output",
        tiny / "nl.csv",
    )
    assert rc == 0
    sub = read_submission(tiny / "nl.csv")
    c_q2 = (0.1 + 0.5) / (np.sqrt(1.01) * np.sqrt(1.25))
    assert sub["q2"] == (
        20,
        pytest.approx(1 / np.sqrt(1.25) - 0.1 / np.sqrt(1.01) - c_q2, abs=2e-3),
    )
    # q3=(0,0,1) sees all 4 labelled rows: b2 .110-.2088, b1 0-.0995, a1 0-B(a1)=0-0 = 0
    # (a1 is orthogonal to n1) -> class 10, confidence 0 - C(q3) = -1/1.005.
    assert sub["q3"] == (10, pytest.approx(-1 / np.sqrt(1.01), abs=2e-3))


def test_saved_tree_index_searches_like_the_built_one(tmp_path):
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(40, 32)))
    db = _unit(centres[rng.integers(0, 40, 3000)] + 0.2 * rng.normal(size=(3000, 32)))
    queries = _unit(centres[rng.integers(0, 40, 200)] + 0.2 * rng.normal(size=(200, 32)))
    built = build_scann_index(db, num_neighbors=5, brute_force_threshold=1000)
    assert built.kind == "tree_ah"
    built.save(str(tmp_path / "idx"))
    loaded = load_index(str(tmp_path / "idx"))
    assert loaded.kind == "tree_ah" and loaded.size == 3000
    a_idx, a_val = built.search(queries, 5)
    b_idx, b_val = loaded.search(queries, 5)
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_allclose(a_val, b_val, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no saved index"):
        load_index(str(tmp_path / "nothing"))


def test_cli_save_then_load_index(tiny, capsys):
    # --center: the saved index keeps the centring means, so the queries of the
    # loaded run are centred the same way.
    common = ["--queries", tiny / "test.npz", "--solution", tiny / "solution.csv", "--center"]
    rc, out1, _ = _run(
        capsys,
        "--index",
        tiny / "index.npz",
        "--save_index",
        tiny / "saved",
        "--output",
        tiny / "a.csv",
        *common,
    )
    assert rc == 0
    rc, out2, _ = _run(capsys, "--load_index", tiny / "saved", "--output", tiny / "b.csv", *common)
    assert rc == 0
    assert out1.splitlines()[:3] == out2.splitlines()[:3]
    assert (tiny / "a.csv").read_text() == (tiny / "b.csv").read_text()
    # Searching the centred index with uncentred queries would be silently wrong.
    rc, _, err = _run(
        capsys, "--load_index", tiny / "saved", "--output", tiny / "c.csv", *common[:-1]
    )
    assert rc == 2 and "saved with --center" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--index", "I", "I", "--queries", "Q"], "2 --index sets but 1 --queries"),
        (["--index", "I", "--queries", "Q", "--weights", "1", "2"], "2 --weights for 1"),
        (["--index", "I", "--queries", "Q", "--mode", "nonlandmark_rerank"], "needs --nonlandmark"),
        (["--queries", "Q"], "give --index"),
        (["--index", "missing.npz", "--queries", "Q"], "no embedding file"),
    ],
)
def test_user_errors_are_one_line(tiny, capsys, argv, message):
    argv = [
        str(tiny / "index.npz") if a == "I" else str(tiny / "test.npz") if a == "Q" else a
        for a in argv
    ]
    rc, out, err = _run(capsys, *argv, "--output", tiny / "x.csv")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and not out


def _ensemble_runs(tiny, fold_dir="fold0"):
    """Two runs laid out as `gld_jax.main --mode embed` and scripts/tpu name them."""
    runs = tiny / "runs"
    for name, index, test in (("m1", "index.npz", "test.npz"), ("m2", "index_b.npz", "test_b.npz")):
        emb = runs / f"{name}_{fold_dir}" / "embeddings"
        (emb / "train").mkdir(parents=True)
        (emb / "test").mkdir()
        (emb / "train" / "part-00000.npz").write_bytes((tiny / index).read_bytes())
        (emb / "test" / "part-00000.npz").write_bytes((tiny / test).read_bytes())
    config = tiny / "ens.py"
    config.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(dict(runs_root='unset', fold=0, runs=['m1', 'm2'],\n"
        "        weights=[1.0, 2.0], mode='top1', num_neighbors=5, nonlandmark='', solution=''))\n"
    )
    return runs, config


def test_ensemble_config_names_the_runs_and_flags_override_it(tiny, capsys):
    runs, config = _ensemble_runs(tiny)
    rc, out, err = _run(
        capsys,
        "--config",
        config,
        f"--config.runs_root={runs}",
        "--config.solution",
        tiny / "solution.csv",
        "--output",
        tiny / "cfg.csv",
    )
    assert rc == 0, err
    assert "GAP 0.666667" in out.splitlines()  # the same as the flags-only ensemble
    assert json.loads(out.splitlines()[-1])["models"] == 2
    assert read_submission(tiny / "cfg.csv")["q4"] == (20, pytest.approx(0.8, abs=2e-3))
    # A flag after the config wins over the config's value.
    rc, out, _ = _run(
        capsys,
        "--config",
        config,
        f"--config.runs_root={runs}",
        "--mode",
        "knn_vote",
        "--output",
        tiny / "knn.csv",
    )
    assert rc == 0 and json.loads(out.splitlines()[-1])["mode"] == "knn_vote"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config.nope=1"], "--config.nope: unknown key"),
        (["--config.fold=zero"], "--config.fold=zero: not a int"),
        (["--config.weights=[1.0]"], "1 weights for 2 runs"),
        (["--config.fold=3"], "m1_fold3"),
    ],
)
def test_ensemble_config_errors_are_one_line(tiny, capsys, extra, message):
    runs, config = _ensemble_runs(tiny)
    argv = ["--config", config, f"--config.runs_root={runs}", *extra, "--output", tiny / "x.csv"]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_the_recipe_ensemble_config_reads_six_runs_of_the_tpu_scripts_layout():
    from gld_jax.retrieval.ensemble_config import config_to_args, load_ensemble_config

    config = load_ensemble_config("configs/ensemble.py", {"runs_root": "gs://b/runs"})
    args = config_to_args(config)
    index = args[args.index("--index") + 1 : args.index("--queries")]
    assert index[0] == "gs://b/runs/effb7_fold0/embeddings/train"
    assert index[-1] == "gs://b/runs/resnest101_fold0/embeddings/train"
    assert len(index) == 6 and args[args.index("--mode") + 1] == "blend"


def test_cli_keeps_tensorflow_start_up_lines_off_stderr(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.array([f"i{i}" for i in range(64)])
    save_embeddings(str(tmp_path / "i.npz"), EmbeddingSet(ids, x, rng.integers(0, 4, 64)))
    save_embeddings(str(tmp_path / "q.npz"), EmbeddingSet(ids[:8], x[:8], np.full(8, -1)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(  # a ScaNN tree: TensorFlow is imported
        [sys.executable, os.path.join(ROOT, "scripts", "evaluate_scann.py"), "--mode", "top1"]
        + ["--index", str(tmp_path / "i.npz"), "--queries", str(tmp_path / "q.npz")]
        + ["--output", str(tmp_path / "s.csv"), "--brute_force_threshold", "0"]
        + ["--num_leaves", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "cpu_feature_guard" not in out.stderr and "oneDNN" not in out.stderr
