"""The HTML retrieval report: contents by hand, then rendered in headless Chromium."""

import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gld_jax.retrieval.embeddings import EmbeddingSet
from gld_jax.retrieval.evaluate import evaluate_retrieval
from gld_jax.retrieval.report import GREEN, RED, write_report
from tfrecords_tools.features import make_example

# Index: 3 images of landmark 10 (blue-ish), 3 of landmark 20 (orange-ish), in 2-D.
INDEX = [
    ("i10a", 10, (1, 0)),
    ("i10b", 10, (0.95, 0.31)),
    ("i10c", 10, (0.9, 0.44)),
    ("i20a", 20, (0, 1)),
    ("i20b", 20, (0.31, 0.95)),
    ("i20c", 20, (0.44, 0.9)),
]
# q1 ~ landmark 10 (truth 10), q2 ~ landmark 20 but truth 10, q3 a non-landmark.
QUERIES = [("q1", 10, (1, 0.05)), ("q2", 10, (0.05, 1)), ("q3", -1, (0.7, 0.7))]


def _jpeg(colour):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def evaluated(tmp_path):
    tf_dir = tmp_path / "tfrecords"
    tf_dir.mkdir()
    for split, rows in (("train", INDEX), ("test", QUERIES)):
        with tf.io.TFRecordWriter(str(tf_dir / f"{split}-00000-of-00001.tfrecord")) as w:
            for image_id, lab, _ in rows:
                colour = (
                    (40, 60, 200) if lab == 10 else (230, 140, 30) if lab == 20 else (90, 90, 90)
                )
                ex = make_example(
                    encoded=_jpeg(colour),
                    image_id=image_id,
                    class_index=0,
                    landmark_id=lab,
                    height=48,
                    width=64,
                    fold=0,
                    clean=True,
                )
                w.write(ex.SerializeToString())
    (tmp_path / "solution.csv").write_text(
        "id,landmarks,Usage\nq1,10,Public\nq2,10,Private\nq3,,Public\n"
    )

    def emb(rows):
        return EmbeddingSet(
            np.array([r[0] for r in rows]),
            _unit([r[2] for r in rows]),
            np.array([r[1] for r in rows]),
        )

    ev = evaluate_retrieval(emb(QUERIES), index=emb(INDEX), num_neighbors=5)
    out = tmp_path / "report"
    write_report(
        str(out), ev, tfrecord_dir=str(tf_dir), solution_path=str(tmp_path / "solution.csv")
    )
    return out


def test_report_contents(evaluated):
    page = (evaluated / "index.html").read_text()
    for png in ("precision_vs_rank.png", "confidence_histogram.png"):
        assert Image.open(evaluated / png).size == (640, 360)
        assert f'src="{png}"' in page
    # q1 -> 10 right, q2 -> 20 wrong, q3 -> non-landmark: predicted right 1 of 3;
    # GAP: q1 (cos .9988) ranks first and is right, q2 is wrong -> 1/1 over M=2 -> 0.5.
    assert "<b>GAP</b> 0.5000" in page and "1 predicted right" in page
    # 3 query rows x 5 of the 6 index images. q1=(1,.05): cosines i10a .999, i10b .964,
    # i10c .922, i20c .485, i20b .357 -> 3 green. q2=(.05,1), truth 10: i20a, i20b, i20c,
    # then i10c .485, i10b .357 -> 2 green. q3 is a non-landmark -> 0 green.
    green = page.count(f"rgb{GREEN}")
    red = page.count(f"rgb{RED}")
    assert green + red == 15
    assert green == 3 + 2 + 0
    assert len(os.listdir(evaluated / "images")) == 9  # 6 index + 3 query images


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium in PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    url = (evaluated / "index.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", "--virtual-time-budget=5000", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # The page's onload script counts the <img> elements that decoded.
    loaded = re.search(r"images loaded: (\d+)/(\d+)", dom)
    assert loaded and loaded.group(1) == loaded.group(2) == str(2 + 3 * 6)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, "--window-size=900,1600", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    px = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(colour, tol=12):
        return int((np.abs(px - np.array(colour)).max(axis=1) <= tol).sum())

    # Frames (4 px CSS borders) and the thumbnails' own colours are on screen.
    assert count(GREEN) > 500 and count(RED) > 500
    assert count((40, 60, 200)) > 2000 and count((230, 140, 30)) > 2000
