"""The converter on the real dataset's bad inputs, its resume/idempotence, tars, gfile
and TFDS output.

Every bad kind is made by the test itself. Oracles: the images the test wrote (pixels
compared after tf.io.decode_jpeg, the decoder the pipeline uses), the list of ids the
test knows to be good or bad, a clean uninterrupted build (byte comparison), and TFDS's
own reader.
"""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from file_tree import file_tree
from PIL import Image

from tfrecords_tools import build_gldv2, features, sources
from tfrecords_tools.images import EncodeOptions, ImageError, encode_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _id(n: int) -> str:
    """A 16-hex id whose a/b/c directory differs between tests' images (md5 of n)."""
    return hashlib.md5(str(n).encode()).hexdigest()[:16]


def _noise(h=24, w=32, seed=0):
    return (np.random.default_rng(seed).uniform(size=(h, w, 3)) * 255).astype(np.uint8)


def _smooth(h=24, w=32):
    """A smooth asymmetric RGB image: JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], -1).astype(
        np.uint8
    )


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return tf.io.decode_jpeg(data, channels=3).numpy()


# --------------------------------------------------------------------------- images


def test_rgb_jpeg_bytes_kept_baseline_or_progressive():
    for progressive in (False, True):
        data = _save(Image.fromarray(_noise()), "JPEG", quality=90, progressive=progressive)
        enc = encode_image(data)
        assert enc.data == data and (enc.height, enc.width, enc.change) == (24, 32, "")


def test_grayscale_jpeg_is_reencoded_to_three_channels():
    import tensorflow as tf

    gray = _noise()[..., 0]
    enc = encode_image(_save(Image.fromarray(gray, "L"), "JPEG", quality=95))
    assert enc.change == "converted JPEG L"
    # a plain decode (no channels=) gives 3 equal channels, close to the gray source
    pixels = tf.io.decode_jpeg(enc.data).numpy()
    assert pixels.shape == (24, 32, 3)
    assert np.abs(pixels.astype(int) - gray[..., None].astype(int)).mean() < 8


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_formats_under_jpg_name_are_converted(fmt):
    pixels = _smooth()
    enc = encode_image(
        _save(Image.fromarray(pixels), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    )
    assert enc.change == f"converted {fmt} RGB"
    got = _decode(enc.data)
    assert got.shape == pixels.shape
    assert np.abs(got.astype(int) - pixels).mean() < 3  # JPEG q95 of a smooth image


def test_cmyk_and_alpha_and_16bit_converted():
    pixels = _smooth()
    cmyk = encode_image(_save(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.change == "converted JPEG CMYK"
    assert np.abs(_decode(cmyk.data).astype(int) - pixels).mean() < 4
    # Fully transparent pixels become white; opaque ones keep their colour.
    rgba = np.dstack([pixels, np.where(np.arange(32) < 16, 255, 0)[None, :].repeat(24, 0)])
    got = _decode(encode_image(_save(Image.fromarray(rgba.astype(np.uint8), "RGBA"), "PNG")).data)
    assert np.abs(got[:, 20:].astype(int) - 255).max() <= 3
    assert np.abs(got[:, :12].astype(int) - pixels[:, :12]).mean() < 3
    # 16-bit grey: 65535 -> 255 and 25700 -> 100 (divide by 257), not clipped to white.
    grey16 = np.full((24, 32), 25700, np.uint16)
    grey16[:, 16:] = 65535
    enc = encode_image(_save(Image.fromarray(grey16), "PNG"))
    assert enc.change.startswith("converted PNG I")
    got = _decode(enc.data)
    assert abs(int(got[5, 4, 0]) - 100) <= 2 and abs(int(got[5, 28, 1]) - 255) <= 2


@pytest.mark.parametrize("orientation,turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_rotation_applied(orientation, turn):
    # EXIF 6 means "rotate 90 clockwise to display" (np.rot90 k=-1); 8 counter-clockwise.
    pixels = _smooth()
    exif = Image.Exif()
    exif[0x0112] = orientation
    enc = encode_image(_save(Image.fromarray(pixels), "JPEG", quality=95, exif=exif))
    want = np.rot90(pixels, turn)
    assert enc.change == "rotated" and (enc.height, enc.width) == want.shape[:2]
    assert np.abs(_decode(enc.data).astype(int) - want).mean() < 3


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"not an image at all", "not an image: the file holds text"),
        (bytes(range(200, 256)) * 4, "not an image: no known image format"),
        (_save(Image.fromarray(_noise(64, 64)), "JPEG", quality=95)[:900], "truncated"),
        (_save(Image.fromarray(_noise(64, 64)), "PNG")[:200], "truncated"),
    ],
)
def test_broken_files_refused(data, reason):
    with pytest.raises(ImageError, match=reason):
        encode_image(data)


def test_huge_images_decode_downscaled_or_are_refused():
    # 20,000 x 20,000 is 400 M pixels: a JPEG is decoded at 1/4 per side by DCT scaling
    # (5000^2 = 25 M <= the 64 M default limit), a PNG (no DCT scaling) is refused
    # from its header, before any pixel is decoded.
    big = _save(Image.new("L", (20000, 20000), 128), "JPEG", quality=50)
    enc = encode_image(big)
    assert (enc.height, enc.width, enc.change) == (5000, 5000, "downscaled huge+converted JPEG L")
    png = _save(Image.new("1", (20000, 20000), 1), "PNG")
    with pytest.raises(ImageError, match="too large: 20000x20000"):
        encode_image(png)
    # --max_side with DCT scaling: 800x600 -> 512x384 exactly.
    photo = _save(Image.fromarray(_noise(600, 800)), "JPEG")
    enc = encode_image(photo, EncodeOptions(max_side=512))
    assert (enc.height, enc.width, enc.change) == (384, 512, "resized")


def test_ids_never_make_paths_outside():
    assert sources.valid_id("0123456789abcdef")
    for bad in (
        "../../etc/passwd",
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdefa",
        "/abs/path/xxxxxx",
        "0123456789abcde\x00",
    ):
        assert not sources.valid_id(bad)
        with pytest.raises(ValueError):
            sources.image_path("/data", "train", bad)


# --------------------------------------------------------------------------- a bad dataset


GOOD = {_id(i): 100 + i % 3 for i in range(1, 10)}  # 9 plain JPEGs in 3 classes
ODD = {
    "png": _id(0x10),
    "webp": _id(0x11),
    "cmyk": _id(0x12),
    "gray": _id(0x13),
    "png16": _id(0x14),
    "exif": _id(0x15),
}
BAD = {
    "empty": _id(0x20),
    "truncated": _id(0x21),
    "huge_png": _id(0x22),
    "no_file": _id(0x23),
    "in_unreadable_dir": _id(0xF00),
}
ORPHAN = _id(0x30)  # a file without a CSV row
TEST_ID, INDEX_ID = _id(0x40), _id(0x41)


def _write(root, split, image_id, data):
    path = os.path.join(root, split, image_id[0], image_id[1], image_id[2], image_id + ".jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _make_bad_dataset(root):
    for i, image_id in enumerate(GOOD):
        _write(root, "train", image_id, _save(Image.fromarray(_noise(seed=i)), "JPEG"))
    px = Image.fromarray(_smooth())
    exif = Image.Exif()
    exif[0x0112] = 6
    odd = {
        "png": _save(px, "PNG"),
        "webp": _save(px, "WEBP"),
        "cmyk": _save(px.convert("CMYK"), "JPEG"),
        "gray": _save(px.convert("L"), "JPEG"),
        "png16": _save(Image.fromarray(np.full((8, 8), 30000, np.uint16)), "PNG"),
        "exif": _save(px, "JPEG", exif=exif),
    }
    for kind, data in odd.items():
        _write(root, "train", ODD[kind], data)
    _write(root, "train", BAD["empty"], b"")
    _write(root, "train", BAD["truncated"], _save(Image.fromarray(_noise(64, 64)), "JPEG")[:900])
    _write(root, "train", BAD["huge_png"], _save(Image.new("1", (20000, 20000), 1), "PNG"))
    _write(root, "train", BAD["in_unreadable_dir"], _save(px, "JPEG"))
    _write(root, "train", ORPHAN, _save(px, "JPEG"))
    _write(root, "test", TEST_ID, _save(px, "JPEG"))
    _write(root, "index", INDEX_ID, _save(px, "JPEG"))
    with open(os.path.join(root, "train", "notes.txt"), "w") as f:
        f.write("stray")
    rows = [f"{i},http://x,{lm}" for i, lm in GOOD.items()]
    rows += [f"{i},http://x,7" for i in ODD.values()]
    rows += [f"{i},http://x,8" for i in BAD.values()]
    rows += [
        f"{_id(1)},http://x,101",  # duplicate id (first row wins)
        f"{_id(0x50)},http://x,notanumber",  # malformed landmark
        "../../../etc/passwd,http://x,3",  # path traversal attempt
        f"{_id(0x51).upper()},http://x,3",  # not lowercase hex
        f"{_id(0x52)},http://x,3,extra",  # too many cells
        f"{_id(0x53)},{'x' * 200_000},3",  # over the csv field limit: csv.Error
        '"' + _id(0x54) + ",never closed\x00",
    ]  # runaway quote: swallows the line
    with open(os.path.join(root, "train.csv"), "w", newline="") as f:
        f.write("id,url,landmark_id\n" + "\n".join(rows) + "\n")
    with open(os.path.join(root, "train_clean.csv"), "w") as f:
        f.write(
            "landmark_id,images\n100," + " ".join(i for i, lm in GOOD.items() if lm == 100) + "\n"
        )
    with open(os.path.join(root, "test.csv"), "w") as f:
        f.write(f"id\n{TEST_ID}\n")
    with open(os.path.join(root, "index.csv"), "w") as f:
        f.write(f"id\n{INDEX_ID}\n{INDEX_ID}\n")


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad"))
    _make_bad_dataset(root)
    return root


def _records(out, files):
    got = {}
    for name in files:
        for raw in tf.data.TFRecordDataset(os.path.join(out, name)).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            image_id = f[features.ID].bytes_list.value[0].decode()
            assert image_id not in got  # exactly once
            got[image_id] = (
                f[features.ENCODED].bytes_list.value[0],
                f[features.LANDMARK_ID].int64_list.value[0],
            )
    return got


def test_bad_dataset_converts_good_images_and_lists_every_bad_one(
    bad_root, tmp_path, monkeypatch, capsys
):
    # An unreadable directory: as root chmod does not stop reads, so os.scandir is made
    # to fail for one a/b/c directory the way it fails for a user without permission.
    hidden = BAD["in_unreadable_dir"]
    unreadable = os.path.join(bad_root, "train", *hidden[:3])
    assert all(i[:3] != hidden[:3] for i in [*GOOD, *ODD.values(), ORPHAN])
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, str) and path == unreadable:
            raise PermissionError(13, "Permission denied", unreadable)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = str(tmp_path / "out")
    assert (
        build_gldv2.main(
            [
                "--data_dir",
                bad_root,
                "--output_dir",
                out,
                "--num_shards",
                "2",
                "--num_workers",
                "1",
                "--no_progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("converted train 15, test 1, index 1 images")
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    got = _records(out, manifest["splits"]["train"]["files"])
    assert set(got) == set(GOOD) | set(ODD.values())  # nothing good lost, each once
    assert {i: lm for i, (_, lm) in got.items() if i in GOOD} == GOOD
    import tensorflow as tf

    for data, _ in got.values():
        assert _decode(data).ndim == 3  # every stored image decodes with TF
        assert tf.io.decode_jpeg(data).shape[-1] == 3  # to 3 channels, unasked
    reasons = {(s["split"], s["id"]): s["reason"] for s in manifest["skipped"]}
    expect = {
        ("train", BAD["empty"]): "empty file",
        ("train", BAD["truncated"]): "truncated",
        ("train", BAD["huge_png"]): "too large",
        ("train", BAD["no_file"]): "missing file",
        ("train", BAD["in_unreadable_dir"]): "missing file",
        ("train", os.path.join("train", *BAD["in_unreadable_dir"][:3])): "unreadable directory",
        ("train", ORPHAN): "no csv row",
        ("train", "train/notes.txt"): "stray file",
        ("train", _id(1)): "duplicate id",
        ("train", _id(0x50)): "bad csv row",
        ("train", "../../../etc/passwd"): "bad id",
        ("train", _id(0x51).upper()): "bad id",
        ("train", _id(0x52)): "bad csv row",
        ("train", _id(0x54) + ",never closed\x00"): "bad id",  # csv strips the quote
        ("index", INDEX_ID): "duplicate id",
    }
    for key, reason in expect.items():
        assert reasons[key].startswith(reason), (key, reasons.get(key))
    malformed = [r for (split, i), r in reasons.items() if r.startswith("malformed csv line")]
    assert len(malformed) == 1
    assert len(manifest["skipped"]) == len(expect) + 1
    assert manifest["skipped_counts"]["missing file"] == 2
    assert manifest["reencoded"] == {
        "converted JPEG CMYK": 1,
        "converted JPEG L": 1,
        "converted PNG I;16": 1,
        "converted PNG RGB": 1,
        "converted WEBP RGB": 1,
        "rotated": 1,
    }
    assert manifest["converted_to_rgb"] == 5  # CMYK, grayscale, 16-bit, PNG, WebP
    # Class counts for dynamic margins: the odd images' class 7 has all 6. Class 8's files
    # exist but none decodes: the table (fixed before decoding) keeps it, counted empty.
    full = manifest["label_sets"]["full"]
    assert dict(zip(full["landmark_ids"], full["class_counts"], strict=True)) == {
        100: 3,
        101: 3,
        102: 3,
        7: 6,
        8: 0,
    }
    assert full["num_empty_classes"] == 1
    clean = manifest["label_sets"]["clean"]
    assert (clean["landmark_ids"], clean["class_counts"]) == ([100], [3])


def _tar_dataset(folder_root, tar_root, per_tar=5):
    """GLDv2's download format: each split's images in tars with members a/b/c/<id>.jpg."""
    for split in ("train", "test", "index"):
        listing = sources.list_folder(folder_root, split)
        os.makedirs(os.path.join(tar_root, split))
        ids = sorted(listing.locations)
        for t in range(0, len(ids), per_tar):
            path = os.path.join(tar_root, split, f"images_{t // per_tar:03d}.tar")
            with tarfile.open(path, "w") as tar:
                for image_id in ids[t : t + per_tar]:
                    tar.add(
                        listing.locations[image_id],
                        arcname=f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg",
                    )
    for name in ("train.csv", "train_clean.csv", "test.csv", "index.csv"):
        with (
            open(os.path.join(folder_root, name), "rb") as a,
            open(os.path.join(tar_root, name), "wb") as b,
        ):
            b.write(a.read())


def _same_files(a, b, names):
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def test_from_tars_gives_the_same_shards_as_the_folder(bad_root, tmp_path):
    tars = str(tmp_path / "tars")
    _tar_dataset(bad_root, tars)
    a, b = str(tmp_path / "folder"), str(tmp_path / "tar")
    ma = build_gldv2.build_gldv2(bad_root, a, num_shards=3, show_progress=False)
    mb = build_gldv2.build_gldv2(
        tars, b, num_shards=3, from_tars=True, num_workers=2, show_progress=False
    )
    files = [f for s in build_gldv2.SPLITS for f in ma["splits"][s]["files"]]
    _same_files(a, b, files)
    # Same images, same reasons, except the stray notes.txt the tars do not contain.
    strip = [s for s in ma["skipped"] if not s["reason"].startswith("stray")]
    assert mb["skipped"] == strip


def _kill_during_build(data_dir, out, kill_at):
    """Runs the CLI in a subprocess that SIGKILLs itself while encoding image `kill_at`."""
    script = (
        "import os, signal, sys\n"
        "from tfrecords_tools import build_gldv2\n"
        "from tfrecords_tools import shards\n"
        "real, n = shards.encode_image, [0]\n"
        "def encode(data, options):\n"
        "    n[0] += 1\n"
        f"    if n[0] == {kill_at}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(data, options)\n"
        "shards.encode_image = encode\n"
        f"sys.exit(build_gldv2.main(['--data_dir', {data_dir!r}, '--output_dir', {out!r},"
        " '--num_shards', '4', '--num_workers', '1', '--no_progress']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_killed_run_resumes_and_reruns_are_byte_identical(bad_root, tmp_path):
    clean_out, out = str(tmp_path / "clean"), str(tmp_path / "resumed")
    reference = build_gldv2.build_gldv2(bad_root, clean_out, num_shards=4, show_progress=False)
    # 18 train files exist (15 good, 3 bad): shards of 5,5,4,4, so encode 12 is in shard 2.
    _kill_during_build(bad_root, out, kill_at=12)
    left = sorted(os.listdir(out))
    assert "manifest.json" not in left
    assert [n for n in left if ".tmp-" in n]  # the shard being written when killed
    done = sorted(n[:-5] for n in os.listdir(os.path.join(out, build_gldv2.PARTS_DIR)))
    assert done == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in done}

    manifest = build_gldv2.build_gldv2(bad_root, out, num_shards=4, show_progress=False)
    assert manifest.pop("_reused_shards") == 2  # only the remaining shards were written
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in done} == stamps
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    reference.pop("_reused_shards")
    assert manifest == reference
    names = [f for s in build_gldv2.SPLITS for f in manifest["splits"][s]["files"]]
    names += ["manifest.json", "dataset_info.json", "features.json"]
    _same_files(clean_out, out, names)
    # A finished build run again reuses everything and rewrites identical metadata.
    again = build_gldv2.build_gldv2(bad_root, out, num_shards=4, show_progress=False)
    assert again.pop("_reused_shards") == len(names) - 3
    _same_files(clean_out, out, names)
    # Other options are other inputs: nothing stale is reused.
    other = build_gldv2.build_gldv2(bad_root, out, num_shards=4, max_side=16, show_progress=False)
    assert other["_reused_shards"] == 0 and other["max_side"] == 16


def test_two_conversions_of_bad_files_are_byte_identical_with_stable_reasons(tmp_path):
    """Every file of two outputs (shards, manifest, _parts, TFDS metadata) is the
    same when the same folder of bad files is converted twice, by two processes;
    no reason holds an object's address or a temporary path."""
    root = str(tmp_path / "data")
    jpeg = _save(Image.fromarray(_noise(64, 64)), "JPEG")
    files = {
        _id(0x60): _save(Image.fromarray(_noise(seed=5)), "JPEG"),  # a good one
        _id(0x61): b"not an image at all",
        _id(0x62): b"<html><body>404 Not Found</body></html>",
        _id(0x63): bytes(range(200, 256)) * 4,  # binary, no known format
        _id(0x64): jpeg[:900],  # truncated JPEG
        _id(0x65): _save(Image.fromarray(_noise(64, 64)), "PNG")[:200],  # truncated PNG
        _id(0x66): jpeg[:400] + bytes(range(256)) * 10,  # garbled JPEG
        _id(0x67): _save(Image.fromarray(_noise(64, 64)), "WEBP")[:100],
        _id(0x68): b"",
    }
    for image_id, data in files.items():
        _write(root, "train", image_id, data)
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("id,url,landmark_id\n" + "".join(f"{i},http://x,1\n" for i in files))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    build_gldv2.build_gldv2(root, a, num_shards=2, show_progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "tfrecords_tools.build_gldv2", "--data_dir", root]
        + ["--output_dir", b, "--num_shards", "2", "--num_workers", "1", "--no_progress"],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    tree_a, tree_b = file_tree(a), file_tree(b)
    assert sorted(tree_a) == sorted(tree_b)
    assert any(name.startswith(build_gldv2.PARTS_DIR) for name in tree_a)
    for name in tree_a:
        assert tree_a[name] == tree_b[name], name
    with open(os.path.join(a, "manifest.json")) as f:
        reasons = {s["id"]: s["reason"] for s in json.load(f)["skipped"]}
    assert set(reasons) == set(files) - {_id(0x60)}
    for reason in reasons.values():
        assert not re.search(r"0x[0-9a-fA-F]{4,}|object at|/tmp|" + re.escape(root), reason)
    assert reasons[_id(0x62)].startswith("not an image: the file holds text ('<html>")
    assert reasons[_id(0x63)].startswith("not an image: no known image format")
    assert reasons[_id(0x64)].startswith("truncated") and reasons[_id(0x65)].startswith("truncated")


def test_gfile_output_and_tfds_reads_back_what_was_written(bad_root):
    import tensorflow_datasets as tfds

    out = "ram://gldjax-test/out"  # a non-local tf.io.gfile filesystem, like gs://
    manifest = build_gldv2.build_gldv2(bad_root, out, num_shards=3, show_progress=False)
    assert tf.io.gfile.exists(out + "/manifest.json")
    # TFDS on the same shards (copied to disk: TFDS resolves paths with etils, which
    # does not know ram://), per-host even splits that together are the whole split.
    local = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gldjax-tfds-{os.getpid()}")
    tf.io.gfile.makedirs(local)
    for name in tf.io.gfile.listdir(out):
        if not tf.io.gfile.isdir(f"{out}/{name}"):
            tf.io.gfile.copy(f"{out}/{name}", f"{local}/{name}", overwrite=True)
    builder = tfds.builder_from_directory(local)
    assert builder.info.splits["train"].num_examples == manifest["splits"]["train"]["num_examples"]
    want = _records(local, manifest["splits"]["train"]["files"])
    table = manifest["label_sets"]["full"]["landmark_ids"]
    seen = []
    for part in tfds.even_splits("train", 2):
        for ex in tfds.as_numpy(builder.as_dataset(split=part)):
            image = ex["image"]
            image_id = image["id"].decode()
            seen.append(image_id)
            data, landmark = want[image_id]
            np.testing.assert_array_equal(image["encoded"], _decode(data))
            assert image["landmark_id"] == landmark
            assert builder.info.features["image"]["class"].int2str(image["class"]) == str(
                table[table.index(landmark)]
            )
    assert sorted(seen) == sorted(want)
