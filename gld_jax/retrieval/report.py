"""An HTML report of a retrieval evaluation, with PNG charts and an image grid.

``write_report(dir, evaluation, ...)`` writes ``dir/index.html`` and beside it
``precision_vs_rank.png``, ``confidence_histogram.png`` and ``images/*.jpg``:
the GAP lines, precision among the first r predictions (ranked by confidence),
the confidence histogram of correct / wrong (landmark query) / non-landmark
query predictions, and a grid of test images each followed by its top-5
retrieved index images, framed green when their landmark is right and red when
wrong. Images are read from the run's TFRecords (TensorFlow, lazily) or, for
photos that were never converted, handed over by id; charts are drawn with
Pillow, so the report needs nothing beyond the runtime set. For photos whose
landmark is unknown (`truth=False`, python -m gld_jax.recognize --report) the
page has no GAP or precision chart, and a retrieved image is framed blue when
its landmark is the predicted one.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Collection, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gld_jax.utils import fs

__all__ = ["read_images", "write_report"]

GREEN = (26, 152, 80)
RED = (215, 48, 39)
GREY = (120, 120, 120)
BLUE = (33, 102, 172)
_THUMB = 112


def read_images(tfrecord_dir: str, ids: Collection[str]) -> dict[str, bytes]:
    """Encoded JPEG bytes of the wanted image ids, from every ``*.tfrecord`` of
    ``tfrecord_dir``; stops reading once all are found. Missing ids are left out."""
    import tensorflow as tf

    from tfrecords_tools import features

    wanted = set(ids)
    found: dict[str, bytes] = {}
    files = fs.glob(os.path.join(tfrecord_dir, "*.tfrecord"))
    spec = {k: features.FEATURE_SPEC[k] for k in (features.ID, features.ENCODED)}
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        ex = tf.io.parse_single_example(record, spec)
        image_id = ex[features.ID].numpy().decode()
        if image_id in wanted and image_id not in found:
            found[image_id] = ex[features.ENCODED].numpy()
            if len(found) == len(wanted):
                break
    return found


def _thumbnail(jpeg: bytes | None, path: str) -> bool:
    if jpeg is None:
        return False
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    img.thumbnail((_THUMB, _THUMB))
    _save_image(img, path, "JPEG", quality=90)
    return True


def _save_image(img: Image.Image, path: str, fmt: str, **options) -> None:
    with fs.open_file(path, "wb") as f:  # PIL writes to the file object: gs:// too
        img.save(f, format=fmt, **options)


def _draw(img: Image.Image) -> ImageDraw.ImageDraw:
    d = ImageDraw.Draw(img)
    d.font = ImageFont.load_default(size=13)  # the bitmap default is too small to read
    return d


def _axes(draw: ImageDraw.ImageDraw, box, xlabel: str, ylabel: str, title: str) -> None:
    x0, y0, x1, y1 = box
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=1)
    draw.text((x0, 8), title, fill=(0, 0, 0))
    draw.text(((x0 + x1) // 2 - 3 * len(xlabel), y1 + 22), xlabel, fill=(0, 0, 0))
    draw.text((4, y0 - 14), ylabel, fill=(0, 0, 0))


def _precision_chart(correct_by_rank: np.ndarray, path: str, width=640, height=360) -> None:
    """precision@r = (correct among first r) / r for r = 1..P."""
    img = Image.new("RGB", (width, height), "white")
    d = _draw(img)
    box = (60, 50, width - 20, height - 50)
    _axes(d, box, "rank r (by confidence)", "precision@r", "Precision vs rank")
    n = len(correct_by_rank)
    if n:
        prec = np.cumsum(correct_by_rank) / np.arange(1, n + 1)
        xs = box[0] + (box[2] - box[0]) * np.arange(n) / max(n - 1, 1)
        ys = box[3] - (box[3] - box[1]) * prec
        d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=BLUE, width=2)
        for frac in (0.0, 0.5, 1.0):
            y = box[3] - (box[3] - box[1]) * frac
            d.text((box[0] - 30, y - 6), f"{frac:.1f}", fill=(0, 0, 0))
        d.text((box[2] - 30, box[3] + 6), str(n), fill=(0, 0, 0))
        d.text((box[0], box[3] + 6), "1", fill=(0, 0, 0))
    _save_image(img, path, "PNG")


def _histogram_chart(
    groups: dict[str, np.ndarray],
    colours: dict[str, tuple],
    path: str,
    bins: int = 20,
    width=640,
    height=360,
) -> None:
    """Side-by-side bars: count of predictions per confidence bin, per group."""
    img = Image.new("RGB", (width, height), "white")
    d = _draw(img)
    box = (60, 50, width - 20, height - 50)
    _axes(d, box, "confidence", "count", "Confidence of correct / wrong / non-landmark predictions")
    values = np.concatenate([v for v in groups.values() if len(v)] or [np.zeros(1)])
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(v, edges)[0] for k, v in groups.items()}
    top = max(1, max(int(c.max()) for c in counts.values()))
    slot = (box[2] - box[0]) / bins
    bar = slot / (len(groups) + 0.5)
    for g, (name, c) in enumerate(counts.items()):
        for b, count in enumerate(c.tolist()):
            if count:
                x = box[0] + b * slot + g * bar
                y = box[3] - (box[3] - box[1]) * count / top
                d.rectangle([x, y, x + bar - 1, box[3] - 1], fill=colours[name])
        d.rectangle(
            [box[2] - 170, box[1] + 18 * g, box[2] - 158, box[1] + 18 * g + 12], fill=colours[name]
        )
        d.text((box[2] - 152, box[1] + 18 * g - 1), f"{name} ({len(groups[name])})", fill=(0, 0, 0))
    d.text((box[0], box[3] + 6), f"{lo:.2f}", fill=(0, 0, 0))
    d.text((box[2] - 30, box[3] + 6), f"{hi:.2f}", fill=(0, 0, 0))
    d.text((box[0] - 40, box[1] - 6), str(top), fill=(0, 0, 0))
    _save_image(img, path, "PNG")


def _pick_grid(order: np.ndarray, count: int) -> np.ndarray:
    """Queries evenly spaced over the confidence ranking: best, middle and worst."""
    if len(order) <= count:
        return order
    return order[np.linspace(0, len(order) - 1, count).round().astype(int)]


def write_report(
    out_dir: str,
    ev,
    *,
    tfrecord_dir: str | None,
    solution_path: str | None = None,
    num_queries: int = 24,
    top: int = 5,
    title: str = "",
    images: Mapping[str, bytes] | None = None,
    truth: bool = True,
) -> str:
    """Writes the report; returns the path of ``index.html``.

    Args:
      out_dir: folder (created).
      ev: a :class:`gld_jax.retrieval.evaluation.Evaluation`.
      tfrecord_dir: TFRecords holding the query and index images (None: only `images`).
      solution_path: solution CSV (truth and GAP); without it the query
        embeddings' labels are the truth (-1 = non-landmark).
      num_queries: rows of the image grid.
      top: retrieved images per row (at most the search's k).
      images: encoded images (any format PIL reads) by id, taken before the
        TFRecords: photos that were never converted.
      truth: False when the queries' landmarks are unknown (photos being
        recognised): no GAP or precision, and a retrieved image is framed blue
        when its landmark is the predicted one, grey otherwise.
    """
    from gld_jax.retrieval.evaluation import gap_scores

    fs.makedirs(os.path.join(out_dir, "images"))
    qids = ev.query_ids.tolist()
    if not truth:
        sol: Mapping[str, Collection[int]] = {}
        scores = {}
    elif solution_path:
        from gld_jax.metrics import read_solution

        sol = read_solution(solution_path)
        scores = gap_scores(ev, solution_path)
    else:
        sol = {
            i: ({int(lab)} if lab >= 0 else set())
            for i, lab in zip(qids, ev.query_labels, strict=True)
        }
        scores = {}
    scored = np.array([i in sol for i in qids]) if truth else np.ones(len(qids), bool)
    landmark = np.array([bool(sol.get(i)) for i in qids])
    predicted = ev.labels >= 0
    right = (
        np.array([int(lab) in sol.get(i, ()) for i, lab in zip(qids, ev.labels, strict=True)])
        & predicted
    )

    use = scored & predicted
    order = np.flatnonzero(use)[np.lexsort((np.array(qids)[use], -ev.confidences[use]))]
    if truth:
        _precision_chart(right[order].astype(float), os.path.join(out_dir, "precision_vs_rank.png"))
        groups = {
            "correct": ev.confidences[use & right],
            "wrong": ev.confidences[use & landmark & ~right],
            "non-landmark": ev.confidences[use & ~landmark],
        }
        colours = {"correct": GREEN, "wrong": RED, "non-landmark": GREY}
    else:
        groups, colours = {"predictions": ev.confidences[use]}, {"predictions": BLUE}
    _histogram_chart(groups, colours, os.path.join(out_dir, "confidence_histogram.png"))

    grid = _pick_grid(order, num_queries)
    top = min(top, ev.neighbor_rows.shape[1])
    need = {qids[q] for q in grid} | {
        str(ev.index_ids[r]) for q in grid for r in ev.neighbor_rows[q, :top]
    }
    images = images or {}
    jpegs = {i: images[i] for i in need if i in images}  # a lazy mapping reads only these
    if tfrecord_dir and need - jpegs.keys():
        jpegs.update(read_images(tfrecord_dir, need - jpegs.keys()))
    have = {
        i for i in need if _thumbnail(jpegs.get(i), os.path.join(out_dir, "images", f"{i}.jpg"))
    }

    def cell(image_id: str, caption: str, colour: tuple | None) -> str:
        style = f' style="border:4px solid rgb{colour}"' if colour else ' class="query"'
        img = (
            f'<img src="images/{html.escape(image_id)}.jpg" alt="{html.escape(image_id)}">'
            if image_id in have
            else '<div class="missing">no image</div>'
        )
        return f"<td{style}>{img}<br><small>{html.escape(caption)}</small></td>"

    rows = []
    for q in grid:
        known = " ".join(str(t) for t in sorted(sol.get(qids[q], ()))) or "non-landmark"
        said = f"truth {known} | " if truth else ""
        cells = [
            cell(
                qids[q],
                f"{qids[q][:8]} {said}pred {ev.labels[q]} conf {ev.confidences[q]:.3f}",
                None,
            )
        ]
        for r, sim in zip(ev.neighbor_rows[q, :top], ev.neighbor_sims[q, :top], strict=True):
            lab = int(ev.index_labels[r])
            if truth:
                colour = GREEN if lab in sol.get(qids[q], ()) else RED
            else:
                colour = BLUE if lab == ev.labels[q] else GREY
            cells.append(cell(str(ev.index_ids[r]), f"{lab} cos {sim:.3f}", colour))
        rows.append("<tr>" + "".join(cells) + "</tr>")

    gap_html = "".join(f"<li><b>{html.escape(k)}</b> {v:.4f}</li>" for k, v in scores.items())
    if truth:
        no_gap, query_kind = "no solution given: no GAP", "Test images"
        counts = (
            f"{int(scored.sum())} scored queries, {int(landmark.sum())} with a landmark,\n"
            f"{int(right[scored].sum())} predicted right"
        )
        precision_html = (
            '<h2>Precision vs rank</h2><img src="precision_vs_rank.png" '
            'style="width:640px;height:360px">'
        )
        frames = "framed green when its landmark is one of the query's, red otherwise"
    else:
        no_gap, query_kind = "landmarks of the queries unknown: no GAP", "Queries"
        counts, precision_html = f"{int(predicted.sum())} queries with a prediction", ""
        frames = "framed blue when its landmark is the predicted one, grey otherwise"
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>gld-jax retrieval report</title>
<style>
body {{ font-family: sans-serif; margin: 20px; }}
td {{ text-align: center; vertical-align: top; padding: 2px; }}
td.query {{ border: 4px solid #444; background: #eee; }}
img {{ width: {_THUMB}px; height: {_THUMB * 3 // 4}px; object-fit: cover; }}
.missing {{ width: {_THUMB}px; height: {_THUMB * 3 // 4}px; background: #ccc; }}
</style></head>
<body onload="var im=document.images, ok=0; for (var i=0; i<im.length; i++)
  {{ if (im[i].complete && im[i].naturalWidth > 0) ok++; }}
  document.getElementById('img-status').textContent = 'images loaded: ' + ok + '/' + im.length;">
<h1>Retrieval report {html.escape(title)}</h1>
<ul>{gap_html or f"<li>{no_gap}</li>"}
<li>{counts}; index {len(ev.index_ids)} images</li></ul>
<p id="img-status">images loaded: ?</p>
{precision_html}
<h2>Confidence histogram</h2><img src="confidence_histogram.png" style="width:640px;height:360px">
<h2>{query_kind} and their top-{top} retrieved index images</h2>
<p>Rows span the confidence ranking from most to least confident; a retrieved image is
{frames}.</p>
<table>{"".join(rows)}</table>
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    fs.write_text(path, page)  # last: the page appears once its images are there
    return path
