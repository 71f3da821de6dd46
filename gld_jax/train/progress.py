"""Where this process's training is, for the one line a stopped run prints.

The trainer notes each finished step and its checkpoint folder; a stop from
another thread (a lost host, a stalled step) reads them to say how far the run
got and what a rerun resumes from.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_step: int | None = None
_checkpoint_dir: str | None = None


def begin(checkpoint_dir: str) -> None:
    """A training starts (or resumes): no step finished yet in this call."""
    global _checkpoint_dir, _step
    with _lock:
        _checkpoint_dir, _step = checkpoint_dir, None


def note_step(global_step: int) -> None:
    """The global step (across stages) this process finished last."""
    global _step
    with _lock:
        _step = global_step


def last_complete_checkpoint(directory: str | None) -> int | None:
    """The newest committed checkpoint step in `directory` (what a rerun
    resumes from), read from the folder; None when there is none. An
    interrupted save is not committed and not counted."""
    if not directory:
        return None
    import orbax.checkpoint as ocp

    steps = ocp.path.step.checkpoint_steps(directory)
    return max(steps) if steps else None


def where() -> str:
    """'at step 12, last complete checkpoint: step 10' (or 'before the first
    training step', 'none')."""
    with _lock:
        step, directory = _step, _checkpoint_dir
    at = "before the first training step" if step is None else f"at step {step}"
    try:
        last = last_complete_checkpoint(directory)
    except Exception as e:  # a stop must not fail on a listing (a lost bucket grant)
        return f"{at}, last complete checkpoint: unknown ({type(e).__name__})"
    return f"{at}, last complete checkpoint: {'none' if last is None else f'step {last}'}"
