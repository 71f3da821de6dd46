"""Recognise landmarks in any photos with a trained run or an ensemble, or embed
a collection of them.

    python -m gld_jax.recognize --workdir runs/demo photo.jpg holidays/ @list.txt
    python -m gld_jax.recognize --ensemble configs/ensemble.py --ensemble.runs_root=gs://B/runs \\
        --output predictions.csv gs://B/photos/
    python -m gld_jax.recognize --workdir runs/demo --embed_only --labels mine.csv \\
        --output mine.npz collection/
    python -m gld_jax.recognize --workdir runs/demo --index mine.npz --mode top1 photo.jpg

Each photo is prepared as the run's eval pipeline prepares its test images
(gld_jax.data.photos), embedded by the run's jitted step on its mesh, searched
in the run's index and predicted with the run's mode (`eval.prediction`; the
ensemble config's `mode`), so a photo of the run's test split gets the row
`submission.csv` has for it. One CSV row per photo: `path,landmark_id,
confidence`, the K nearest index images (id, landmark, cosine) and the head's
top landmarks (landmark, cosine).

A file that cannot be used is one line on stderr (`skipped PATH: why`) and the
rest go on. Exit status: 0 when at least one photo was recognised (or
embedded), 1 when none was, 2 for a usage error or a workdir without a
finished run (one line naming what is missing).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from gld_jax.trained_run import RunFiles, parse_run_args, run_parser, runs_problem
from gld_jax.utils import fs
from gld_jax.utils.cli import (
    EXIT_USAGE,
    cpu_only_when_no_accelerator,
    print_user_error,
    quiet_tensorflow,
    user_errors,
)

EXIT_NONE = 1  # no photo could be recognised


def _parser() -> argparse.ArgumentParser:
    from gld_jax.retrieval.evaluate import MODES

    p = run_parser(
        "python -m gld_jax.recognize",
        "Recognise landmarks in photos with a trained run or an ensemble.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files, folders (searched at any depth), globs, gs:// prefixes, "
        "or @LIST (a text file with one PATH per line)",
    )
    p.add_argument(
        "--output",
        help="the predictions CSV (default: standard output); with --embed_only the "
        "embedding set (.npz)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="prediction mode (default: the run's eval.prediction, or the ensemble's mode)",
    )
    p.add_argument(
        "--report", help="folder for an HTML gallery of the photos beside their nearest images"
    )
    p.add_argument("--report_queries", type=int, default=24, help="photos in the gallery")
    p.add_argument(
        "--embed_only",
        action="store_true",
        help="only embed the photos into --output set.npz (the run's format, with the "
        "head's lists), to index or query them later",
    )
    p.add_argument(
        "--labels",
        help="with --embed_only: a CSV with id and landmark_id columns (train.csv's "
        "format; id = file name without suffix) giving the photos' landmarks",
    )
    p.add_argument(
        "--index",
        help="an embedding set to search instead of the run's index (e.g. --embed_only's)",
    )
    p.add_argument(
        "--load_index",
        help="a saved index folder (default for a run: <workdir>/index when it holds one)",
    )
    p.add_argument("--save_index", help="keep the index built from the run's embeddings here")
    p.add_argument(
        "--batch_size", type=int, help="images per step (default: the run's eval.batch_size)"
    )
    return p


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.paths:
        return "name at least one PATH (an image, a folder, a gs:// prefix or @LIST)"
    if problem := runs_problem(args):
        return problem
    if args.embed_only:
        if not args.output or not args.output.endswith(".npz"):
            return "--embed_only writes an embedding set: give --output SET.npz"
        for flag in ("index", "load_index", "save_index", "report", "mode"):
            if getattr(args, flag):
                return f"--{flag} searches; --embed_only only embeds"
    elif args.labels:
        return "--labels goes with --embed_only (the landmarks of a collection to index)"
    if args.index and (args.load_index or args.save_index):
        return "--index is searched as given: no --load_index or --save_index with it"
    if args.batch_size is not None and args.batch_size < 1:
        return "--batch_size must be >= 1"
    if args.report_queries < 1:
        return "--report_queries must be >= 1"
    flags = ("workdir", "config", "output", "report", "labels", "index")
    for flag in (*flags, "load_index", "save_index"):
        if problem := fs.unsupported_scheme(getattr(args, flag) or "", f"--{flag}"):
            return problem
    for path in args.paths:
        if problem := fs.unsupported_scheme(path.lstrip("@"), "PATH"):
            return problem
    return None


@dataclasses.dataclass
class _Search:
    """How the photos are predicted: the mode and its parameters, the index (with
    an ensemble's centring means) and, for a report, the index's image files."""

    mode: str
    num_neighbors: int
    sim_power: float
    head_power: float
    nonlandmark_neighbors: int
    search: dict  # build_index's search keywords (also the non-landmark index's)
    index: object  # gld_jax.retrieval.saved_index.LabelledIndex
    nonlandmark: object | None  # EmbeddingSet
    index_files: dict[str, str]


def _labelled_index(args, k: int, params: dict, default_dir: str | None, build):
    """(LabelledIndex, {index id: image file}) from --index, --load_index, a saved
    default folder, or `build()` (the run's own embeddings)."""
    from gld_jax.retrieval.embeddings import embedded_paths, load_embeddings
    from gld_jax.retrieval.evaluate import SEARCH_KEYS, build_labelled_index
    from gld_jax.retrieval.saved_index import (
        LabelledIndex,
        is_saved_index,
        load_labelled_index,
        save_labelled_index,
    )

    search = {key: params[key] for key in SEARCH_KEYS if key in params}
    if args.index:
        emb = load_embeddings(args.index)
        if not (emb.labels >= 0).any():
            raise ValueError(
                f"{args.index} has no labelled rows to predict from: embed the collection "
                "with --embed_only --labels CSV"
            )
        searcher, labelled = build_labelled_index(emb, k, **params)
        return LabelledIndex(searcher, labelled.ids, labelled.labels), embedded_paths(args.index)
    saved = args.load_index or (default_dir if default_dir and is_saved_index(default_dir) else "")
    if saved:
        return load_labelled_index(saved, num_neighbors=k, **search), {}
    index = build()
    searcher, labelled = build_labelled_index(index, k, **params)
    if args.save_index:
        save_labelled_index(args.save_index, searcher, labelled)
    return LabelledIndex(searcher, labelled.ids, labelled.labels), {}


def _split_dir(run: RunFiles, split: str) -> str:
    from gld_jax.trained_run import RunProblem

    path = os.path.join(run.embeddings_dir, split)
    if not fs.exists(path):
        raise RunProblem(
            f"{run.workdir}: no embeddings ({path} is missing): embed the run first "
            "(python -m gld_jax.main --config CONFIG --workdir RUN --mode embed)"
        )
    return path


def _run_search(run: RunFiles, args) -> _Search:
    """One run: its eval config, its saved index or one built from its train
    embeddings, and its non-landmark set for the re-rank modes."""
    from gld_jax.pipeline import SOLUTION_CSV, index_params, run_nonlandmark_set
    from gld_jax.retrieval.embeddings import load_embeddings
    from gld_jax.retrieval.evaluate import RERANK_MODES
    from gld_jax.trained_run import RunProblem

    e = run.config.eval
    mode = args.mode or e.prediction
    params = index_params(run.config)
    index, files = _labelled_index(
        args,
        e.num_neighbors,
        params,
        os.path.join(run.workdir, "index"),
        lambda: load_embeddings(_split_dir(run, "train")),
    )
    nonlandmark = None
    if mode in RERANK_MODES:
        solution = os.path.join(run.data_dir, SOLUTION_CSV)
        test = load_embeddings(_split_dir(run, "test"))
        nonlandmark, why = run_nonlandmark_set(
            run.config, test, solution, has_solution=fs.exists(solution)
        )
        if nonlandmark is None:
            raise RunProblem(f"--mode {mode} needs a non-landmark set: {why}")
    return _Search(
        mode=mode,
        num_neighbors=e.num_neighbors,
        sim_power=e.sim_power,
        head_power=e.head_power,
        nonlandmark_neighbors=e.nonlandmark_neighbors,
        search=params,
        index=index,
        nonlandmark=nonlandmark,
        index_files=files,
    )


def _ensemble_search(ens, runs: Sequence[RunFiles], args) -> _Search:
    """An ensemble: the config's mode and search over the weighted concatenation
    of its runs' train embeddings (or a saved index), as the evaluation CLI does."""
    from gld_jax.retrieval.evaluate import RERANK_MODES, load_ensemble
    from gld_jax.trained_run import RunProblem

    mode = args.mode or ens.mode
    params = {k: ens[k] for k in ("search", "search_dtype", "search_recall") if k in ens}
    train_dirs = [] if (args.index or args.load_index) else [_split_dir(r, "train") for r in runs]
    index, files = _labelled_index(
        args,
        ens.num_neighbors,
        params,
        None,
        lambda: load_ensemble(train_dirs, ens.weights),
    )
    nonlandmark = None
    if mode in RERANK_MODES:
        if not ens.nonlandmark:
            raise RunProblem(
                f"--mode {mode} needs a non-landmark set per run: set the ensemble's "
                "nonlandmark (--ensemble.nonlandmark=FILE under each run's embeddings/)"
            )
        paths = [os.path.join(r.embeddings_dir, ens.nonlandmark) for r in runs]
        nonlandmark = load_ensemble(paths, ens.weights, index.means)
    return _Search(
        mode=mode,
        num_neighbors=ens.num_neighbors,
        sim_power=ens.sim_power,
        head_power=ens.head_power,
        nonlandmark_neighbors=10,  # the evaluation CLI's default
        search=params,
        index=index,
        nonlandmark=nonlandmark,
        index_files=files,
    )


def _csv_rows(paths: Sequence[str], queries, ev) -> Iterator[list]:
    k = ev.neighbor_rows.shape[1]
    head_k = queries.head_labels.shape[1] if queries.has_head else 0
    header = ["path", "landmark_id", "confidence"]
    for j in range(1, k + 1):
        header += [f"neighbor{j}_id", f"neighbor{j}_landmark", f"neighbor{j}_cosine"]
    for j in range(1, head_k + 1):
        header += [f"head{j}_landmark", f"head{j}_cosine"]
    yield header
    for q, path in enumerate(paths):
        label = int(ev.labels[q])
        row = [path, label if label >= 0 else "", f"{ev.confidences[q]:.6f}" if label >= 0 else ""]
        for r, sim in zip(ev.neighbor_rows[q], ev.neighbor_sims[q], strict=True):
            row += [ev.index_ids[r], int(ev.index_labels[r]), f"{sim:.6f}"]
        for j in range(head_k):
            row += [int(queries.head_labels[q, j]), f"{queries.head_scores[q, j]:.6f}"]
        yield row


def _write_csv(output: str | None, rows: Iterator[list]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    if output:
        fs.makedirs(fs.parent(output))
        fs.write_atomic(output, buf.getvalue())
    else:
        sys.stdout.write(buf.getvalue())


class _Files(Mapping):
    """{id: bytes} read from image files only when asked (the report takes a few)."""

    def __init__(self, files: Mapping[str, str]):
        self._files = dict(files)

    def __getitem__(self, key: str) -> bytes:
        from gld_jax.data.photos import read_bytes

        return read_bytes(self._files[key])

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _report_ids(ids: Sequence[str], taken: set[str]) -> list[str]:
    """The photos' ids made unique (two files may share a name) and distinct
    from the index's: the report keys its thumbnails by id."""
    out = []
    for image in ids:
        name, n = image, 1
        while name in taken:
            n += 1
            name = f"{image}~{n}"
        taken.add(name)
        out.append(name)
    return out


def _write_report(
    directory: str, embedded, ev, search: _Search, runs, *, title: str, num_queries: int
) -> str:
    from gld_jax.retrieval.report import write_report

    report_ids = _report_ids(ev.query_ids.tolist(), set(ev.index_ids.tolist()))
    files = dict(search.index_files) | dict(zip(report_ids, embedded.paths, strict=True))
    return write_report(
        directory,
        dataclasses.replace(ev, query_ids=np.asarray(report_ids)),
        # the index images: the run's TFRecords (an --index set names its files)
        tfrecord_dir=None if search.index_files else runs[0].tfrecord_dir,
        images=_Files(files),
        truth=False,
        num_queries=num_queries,
        title=title,
    )


def _read_labels(path: str) -> dict[str, int]:
    """{id: landmark id} of a CSV with `id` and `landmark_id` columns."""
    with fs.open_file(path) as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "landmark_id"} <= set(reader.fieldnames):
            raise ValueError(f"--labels {path}: needs id and landmark_id columns")
        try:
            return {row["id"]: int(row["landmark_id"]) for row in reader if row["landmark_id"]}
        except ValueError as e:
            raise ValueError(f"--labels {path}: a landmark_id is not an integer ({e})") from None


def _embed_only(args, embedded, weights: Sequence[float], runs) -> dict:
    from gld_jax.retrieval.embeddings import save_embeddings

    emb = embedded.combined(weights)
    if args.labels:
        labels = _read_labels(args.labels)
        emb = dataclasses.replace(
            emb, labels=np.asarray([labels.get(i, -1) for i in emb.ids.tolist()], np.int64)
        )
    dtype = runs[0].config.eval.get("embedding_dtype", "float32") if len(runs) == 1 else "float32"
    save_embeddings(args.output, emb, dtype=np.dtype(dtype), paths=np.asarray(embedded.paths))
    return {"embedded": len(emb), "labelled": int((emb.labels >= 0).sum()), "output": args.output}


def _print_skip(path: str, reason: str) -> None:
    from gld_jax.utils.progress import progress_write

    progress_write(f"skipped {path}: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow()
    args = parse_run_args(_parser(), list(sys.argv[1:] if argv is None else argv))
    if problem := _usage_problem(args):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    cpu_only_when_no_accelerator()

    from gld_jax.data.photo_files import expand_inputs

    paths, problems = expand_inputs(args.paths)
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    if not paths:
        print("error: no image files to read", file=sys.stderr)
        return EXIT_NONE

    from gld_jax.embed_photos import embed_photos
    from gld_jax.retrieval.evaluate import evaluate_retrieval
    from gld_jax.trained_run import find_runs, open_run
    from gld_jax.utils.compile_cache import enable_compilation_cache

    try:
        found, weights, ens = find_runs(args)
        # The run's own compiled embedding step, when its cache holds it (local runs).
        enable_compilation_cache(found[0].workdir)
        search = None
        if not args.embed_only:  # before the models: a missing index is one line at once
            search = _ensemble_search(ens, found, args) if ens else _run_search(found[0], args)
            dim = sum(f.config.model.embedding_dim for f in found)
            if search.index.searcher.dim != dim:
                raise ValueError(
                    f"the index has {search.index.searcher.dim}-d rows, the "
                    f"{'ensemble' if ens else 'run'} embeds {dim}-d ones"
                )
        runs = [open_run(f) for f in found]
    except user_errors() as e:
        return print_user_error(e)

    embedded = embed_photos(
        runs,
        paths,
        batch_size=args.batch_size,
        on_error=_print_skip,
        desc="embed" if args.embed_only else "recognise",
    )
    done = len(embedded.paths)
    rate = f"{embedded.images_per_second:.1f} images/s"
    print(
        f"{'embedded' if args.embed_only else 'recognised'} {done} of {len(paths)} "
        f"image files in {embedded.seconds:.1f} s ({rate})",
        file=sys.stderr,
    )
    if not done:
        return EXIT_NONE
    try:
        if args.embed_only:
            summary = _embed_only(args, embedded, weights, runs)
        else:
            queries = embedded.combined(weights, search.index.means)
            ev = evaluate_retrieval(
                queries,
                searcher=search.index.searcher,
                index_ids=search.index.ids,
                index_labels=search.index.labels,
                mode=search.mode,
                num_neighbors=search.num_neighbors,
                nonlandmark=search.nonlandmark,
                nonlandmark_neighbors=search.nonlandmark_neighbors,
                index_params=search.search,
                sim_power=search.sim_power,
                head_power=search.head_power,
            )
            _write_csv(args.output, _csv_rows(embedded.paths, queries, ev))
            summary = {"recognised": done, "mode": search.mode, "output": args.output}
            if args.report:
                title = f"{len(runs)} model(s), {search.mode}, photos"
                summary["report"] = _write_report(
                    args.report,
                    embedded,
                    ev,
                    search,
                    runs,
                    title=title,
                    num_queries=args.report_queries,
                )
    except user_errors() as e:
        return print_user_error(e)
    summary.update(
        skipped=len(paths) - done + len(problems),
        images_per_second=round(embedded.images_per_second, 2),
    )
    if args.output:  # stdout is free for the summary
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
