"""Using a trained run on photos: `python -m gld_jax.recognize` and
`python -m gld_jax.export`, on two small runs trained once for the module.

Oracles: the runs' own `submission.csv` and stored embeddings (the pipeline
embedded the same photos from their TFRecords), and the evaluation CLI's
submission for the ensemble.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tiny import tiny_config

from gld_jax import export, recognize
from gld_jax.config import stage
from gld_jax.pipeline import run_pipeline
from gld_jax.retrieval import evaluate as evaluate_cli
from gld_jax.retrieval.embeddings import load_embeddings
from gld_jax.retrieval.ensemble import combine_embedding_sets
from gld_jax.utils import fs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """<root>/a_all: the tiny set trained long enough that its neighbours are
    told apart (50 steps: top-1 cosines ~0.96, not all ~0.99999 as after 5);
    <root>/b_all: a second model for the ensemble, another size and head: a run
    of A's first stage alone (32 px, the full label set). With A's seed and data
    that run ends in A's checkpoint after that stage, so B is that checkpoint,
    not a second training. Names as configs/ensemble.py's for fold -1."""
    root = tmp_path_factory.mktemp("runs")
    a = tiny_config(root / "a_all" / "data")
    a.tfrecord_dir = str(root / "a_all" / "tfrecords")  # a copied config.json finds it
    a.stages = [
        stage(image_size=32, epochs=6, batch_size=8, learning_rate=2e-3, warmup_epochs=0.5),
        stage(image_size=40, epochs=3, batch_size=8, learning_rate=1e-3, label_set="clean"),
    ]
    a.log_every_steps = 10
    run_pipeline(a, str(root / "a_all"))
    b = tiny_config(a.data_dir)
    b.tfrecord_dir = a.tfrecord_dir
    b.stages = [a.stages[0]]
    first = min(int(n) for n in os.listdir(root / "a_all" / "checkpoints") if n.isdigit())
    shutil.copytree(
        root / "a_all" / "checkpoints" / str(first), root / "b_all" / "checkpoints" / str(first)
    )
    assert run_pipeline(b, str(root / "b_all"))["steps_run"] == 0
    return root


def _test_photos(run_dir) -> list[str]:
    return sorted(
        os.path.join(d, n)
        for d, _, names in os.walk(os.path.join(run_dir, "data", "test"))
        for n in names
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _submission(path) -> dict[str, tuple[int, float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {
        r["id"]: (int(r["landmarks"].split()[0]), float(r["landmarks"].split()[1])) for r in rows
    }


def _predictions(text: str) -> dict[str, tuple[int, float]]:
    """{path: (landmark, confidence)} of recognize's CSV."""
    return {
        r["path"]: (int(r["landmark_id"]), float(r["confidence"]))
        for r in csv.DictReader(io.StringIO(text))
    }


def _assert_reproduces(predictions: dict, submission: dict, photo_ids: dict[str, str]) -> None:
    """Each photo's row is the submission's row of its test image."""
    assert predictions.keys() == photo_ids.keys()
    for path, (landmark, confidence) in predictions.items():
        want = submission[photo_ids[path]]
        assert landmark == want[0], path
        assert confidence == pytest.approx(want[1], abs=1e-3), path


def _tf_decoded_png(jpeg_path: str, png_path: str) -> None:
    # The pixels the run's pipeline decoded (TensorFlow's JPEG decoder). A copy
    # made by another decoder (PIL) differs from them by up to 5 levels.
    pixels = tf.io.decode_jpeg(open(jpeg_path, "rb").read(), channels=3).numpy()
    Image.fromarray(pixels).save(png_path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds one empty row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _stderr_lines(err: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", err) if line.strip()]


def test_recognise_reproduces_the_submission_and_reports_each_bad_file(runs, tmp_path, capsys):
    run = runs / "a_all"
    photos = _test_photos(run)
    named = photos[:2]  # named one by one, and again through the folder: recognised once
    (tmp_path / "list.txt").write_text("# my photos\n" + "\n".join(named) + "\n\n")
    pngs = tmp_path / "png"
    pngs.mkdir()
    for p in photos[:4]:
        _tf_decoded_png(p, str(pngs / f"{_stem(p)}.png"))
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = open(photos[0], "rb").read()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "cut.jpg").write_bytes(truncated[: len(truncated) // 2])
    (bad / "page.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
    (bad / "huge.png").write_bytes(_png_header_only(20_000, 20_000))
    (bad / "notes.txt").write_text("not an image suffix: never read from a folder")
    out = tmp_path / "out.csv"
    argv = ["--workdir", str(run), "--output", str(out), f"@{tmp_path / 'list.txt'}"]
    argv += [str(run / "data" / "test"), str(pngs), str(bad), str(tmp_path / "missing.jpg")]
    assert recognize.main(argv) == 0
    got = _predictions(out.read_text())
    ids = {p: _stem(p) for p in photos} | {
        str(pngs / f"{_stem(p)}.png"): _stem(p) for p in photos[:4]
    }
    _assert_reproduces(got, _submission(run / "submission.csv"), ids)
    assert list(got)[:2] == named  # input order
    header = out.read_text().splitlines()[0].split(",")
    assert header[:6] == [
        "path",
        "landmark_id",
        "confidence",
        "neighbor1_id",
        "neighbor1_landmark",
        "neighbor1_cosine",
    ]
    assert header[-2:] == ["head5_landmark", "head5_cosine"]

    err = capsys.readouterr().err
    skipped = [line for line in _stderr_lines(err) if line.startswith("skipped")]
    assert sorted(skipped) == sorted(
        [
            f"skipped {bad / 'empty.jpg'}: empty file",
            f"skipped {bad / 'cut.jpg'}: truncated: the file ends inside the image data "
            "(an interrupted download?)",
            f"skipped {bad / 'page.jpg'}: not an image: the file holds text "
            "('<html><body>404 Not Found</body>'...), e.g. a saved error page",
            f"skipped {bad / 'huge.png'}: too large: 20000x20000 pixels > limit 64000000",
            f"skipped {tmp_path / 'missing.jpg'}: no such file or folder",
        ]
    )
    assert "Traceback" not in err
    assert f"recognised {len(got)} of {len(got) + 4} image files" in err

    # Nothing usable: exit 1; no PATH or no run: usage, exit 2.
    assert recognize.main(["--workdir", str(run), str(bad / "empty.jpg")]) == 1
    assert recognize.main(["--workdir", str(run)]) == 2
    assert recognize.main(["--workdir", str(run), "--ensemble", "x.py", photos[0]]) == 2
    err = capsys.readouterr().err
    assert "error: name at least one PATH" in err and "Traceback" not in err


def test_an_unfinished_workdir_is_one_line(runs, tmp_path, capsys):
    run, photo = runs / "a_all", _test_photos(runs / "a_all")[0]
    config = fs.read_text(str(run / "config.json"))
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(config)  # its data dirs are a_all's
    no_emb = tmp_path / "no_emb"
    no_emb.mkdir()
    (no_emb / "config.json").write_text(config)
    os.symlink(run / "checkpoints", no_emb / "checkpoints")
    cases = {
        tmp_path / "nothing": f"error: {tmp_path / 'nothing'}: no such run folder",
        tmp_path: f"error: {tmp_path}: no config.json (not a run, or one made before runs "
        "kept their config): give the run's config file with --config",
        no_ckpt: f"error: {no_ckpt}: no checkpoint in {no_ckpt / 'checkpoints'}: "
        "train the run first",
        no_emb: f"error: {no_emb}: no embeddings ({no_emb / 'embeddings' / 'train'} is missing): "
        "embed the run first (python -m gld_jax.main --config CONFIG --workdir RUN --mode embed)",
    }
    for workdir, line in cases.items():
        assert recognize.main(["--workdir", str(workdir), photo]) == 2
        err = capsys.readouterr().err.strip()
        assert err == line


def test_report_embed_only_and_an_index_of_your_own(runs, tmp_path, capsys):
    run = runs / "a_all"
    photos = _test_photos(run)
    report = tmp_path / "report"
    out = tmp_path / "out.csv"
    argv = ["--workdir", str(run), "--output", str(out), "--report", str(report), *photos[:6]]
    assert recognize.main(argv) == 0
    page = (report / "index.html").read_text()
    assert page.count('class="query"') == 6 and "no GAP" in page
    assert len(os.listdir(report / "images")) > 6  # the photos and their neighbours

    # A collection of your own: the test photos labelled with the solution's landmarks.
    solution = run / "data" / "recognition_solution_v2.1.csv"
    labels = tmp_path / "labels.csv"
    with open(solution) as f:
        rows = [(r["id"], r["landmarks"]) for r in csv.DictReader(f) if r["landmarks"]]
    labels.write_text("id,landmark_id\n" + "".join(f"{i},{lab.split()[0]}\n" for i, lab in rows))
    mine = tmp_path / "mine.npz"
    argv = ["--workdir", str(run), "--embed_only", "--labels", str(labels), "--output", str(mine)]
    assert recognize.main([*argv, str(run / "data" / "test")]) == 0
    emb = load_embeddings(str(mine))  # the run's format, as evaluate_scann.py reads it
    assert len(emb) == len(photos) and emb.has_head and emb.head_labels.shape[1] == 5
    stored = load_embeddings(str(run / "embeddings" / "test"))
    order = {i: n for n, i in enumerate(stored.ids.tolist())}
    same = stored.embeddings[[order[i] for i in emb.ids.tolist()]]
    np.testing.assert_allclose(emb.embeddings, same, atol=1e-6)
    assert (emb.labels >= 0).sum() == len(rows)

    # Searched as the index: each labelled photo's nearest image is itself.
    labelled = [p for p in photos if _stem(p) in dict(rows)]
    argv = ["--workdir", str(run), "--index", str(mine), "--mode", "top1", *labelled[:5]]
    argv += ["--output", str(out)]
    assert recognize.main(argv) == 0
    text = out.read_text()
    for row in csv.DictReader(io.StringIO(text)):
        assert row["neighbor1_id"] == _stem(row["path"])
        assert row["landmark_id"] == dict(rows)[_stem(row["path"])]
        assert float(row["confidence"]) == pytest.approx(1.0, abs=1e-5)


def _decoded(path: str) -> np.ndarray:
    return tf.io.decode_jpeg(open(path, "rb").read(), channels=3).numpy()


def test_saved_model_descriptor_is_the_runs_embedding(runs, tmp_path, capsys):
    run = runs / "a_all"
    out = tmp_path / "exported"
    assert export.main(["--workdir", str(run), "--output", str(out)]) == 0
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    assert serve.structured_input_signature[1] == {
        "input_image": tf.TensorSpec([None, None, 3], tf.uint8, name="input_image")
    }
    stored = load_embeddings(str(run / "embeddings" / "test"))
    fn, params = export.load_jax_export(str(out / "jax"))
    for path in _test_photos(run)[:3]:
        want = stored.embeddings[list(stored.ids).index(_stem(path))]
        got = serve(input_image=tf.constant(_decoded(path)))["global_descriptor"].numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert float(np.linalg.norm(got)) == pytest.approx(1.0, abs=1e-5)
        assert float(got @ want) >= 0.9999
        assert float(np.asarray(fn.call(params, _decoded(path))) @ want) >= 0.9999
    odd = np.random.default_rng(0).integers(0, 256, (37, 101, 3), np.uint8)  # any size
    assert serve(input_image=tf.constant(odd))["global_descriptor"].shape == want.shape


def _ensemble_config(runs, tmp_path) -> str:
    path = tmp_path / "ensemble.py"
    path.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.runs_root = {str(runs)!r}\n"
        "    c.fold = -1\n"
        "    c.runs = ['a', 'b']\n"
        "    c.weights = [1.0, 2.0]\n"
        "    c.mode = 'blend'\n"
        "    c.num_neighbors = 5\n"
        "    c.sim_power = 9.0\n"
        "    c.head_power = 10.0\n"
        "    c.search = 'scann'\n"
        "    c.nonlandmark = ''\n"
        "    c.solution = ''\n"
        "    return c\n"
    )
    return str(path)


def test_ensemble_on_ram_paths(runs, tmp_path, capsys, monkeypatch):
    """Photos, their @list, the CSV and the exported model on TF's in-process
    ram:// filesystem (the file layer's remote path, as gs://)."""
    monkeypatch.setattr(fs, "SUPPORTED_SCHEMES", (*fs.SUPPORTED_SCHEMES, "ram"))
    ensemble = _ensemble_config(runs, tmp_path)
    reference = tmp_path / "ensemble_submission.csv"
    assert evaluate_cli.main(["--config", ensemble, "--output", str(reference)]) == 0

    ram = "ram://recognise-test"
    photos = _test_photos(runs / "a_all")
    remote = {}
    for n, p in enumerate(photos):
        path = f"{ram}/photos/{n % 3}/{os.path.basename(p)}"
        fs.makedirs(fs.parent(path))  # ram:// lists only folders made as such
        fs.write_atomic(path, open(p, "rb").read())
        remote[path] = _stem(p)
    listed = list(remote)[:3]
    fs.write_text(f"{ram}/list.txt", "\n".join(listed))
    argv = ["--ensemble", ensemble, "--ensemble.weights=[1.0, 2.0]", "--output", f"{ram}/out.csv"]
    assert recognize.main([*argv, f"@{ram}/list.txt", f"{ram}/photos"]) == 0
    got = _predictions(fs.read_text(f"{ram}/out.csv"))
    _assert_reproduces(got, _submission(reference), remote)

    out = f"{ram}/exported"
    assert export.main(["--ensemble", ensemble, "--output", out]) == 0
    serve = tf.saved_model.load(out).signatures["serving_default"]
    sets = [load_embeddings(str(runs / f"{r}_all" / "embeddings" / "test")) for r in "ab"]
    combined = combine_embedding_sets(sets, [1.0, 2.0])
    for path in photos[:3]:
        want = combined.embeddings[list(combined.ids).index(_stem(path))]
        got = serve(input_image=tf.constant(_decoded(path)))["global_descriptor"].numpy()
        assert got.shape == (64,) and float(got @ want) >= 0.9999
    tf.io.gfile.rmtree(ram)
