"""The recipe's ensemble: six models' embeddings -> one ScaNN search -> submission.

    python scripts/evaluate_scann.py --config configs/ensemble.py \
        --config.runs_root=gs://BUCKET/runs --output gs://BUCKET/submission.csv
    (or scripts/tpu/ensemble.sh evaluate; README "Train the ensemble on a TPU pod")

Each run's embeddings are <runs_root>/<name>_fold<fold>/embeddings/{train,test}
(`python -m gld_jax.main --config configs/<name>.py --mode embed` writes them);
`--config.fold=-1` reads <name>_all. Per image, the L2-normalised embeddings of
the models are concatenated with these weights and normalised again. Flags given
after the config (e.g. `--mode knn_vote`, `--solution ...`) override it.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.runs_root = "runs"  # local folder or gs://BUCKET/runs
    c.fold = 0
    c.runs = ["effb7", "effb6", "effb5", "effb4", "effb3", "resnest101"]
    # Equal weights, as the 3rd place's ensemble averaged its models' similarities.
    c.weights = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # blend (the recipe's submission: sum over the top-5 neighbours of
    # cos^9 x head^10) | head | top1 | knn_vote | nonlandmark_rerank | blend_rerank.
    # The re-rankings need a non-landmark set per run (`nonlandmark`: a file
    # under each run's embeddings/, e.g. made by python -m gld_jax.retrieval.nonlandmark_set).
    c.mode = "blend"
    c.num_neighbors = 5
    c.sim_power = 9.0
    c.head_power = 10.0
    # scann (CPU) | exact_cpu | accelerator (the TPU/GPU devices; README "Which search")
    c.search = "scann"
    c.nonlandmark = ""
    c.solution = ""  # recognition_solution_v2.1.csv: print GAP (overall, Public, Private)
    return c
