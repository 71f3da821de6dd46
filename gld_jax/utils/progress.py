"""Progress bars that stay quiet on non-main processes and in logs."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str, initial: int = 0, enabled: bool = True, unit="step"):
    """A tqdm bar with rate and ETA; disabled (a no-op) when `enabled` is false."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    )


def progress_write(line: str) -> None:
    """Prints one line to stderr above a running bar (its text never runs into the line)."""
    tqdm.write(line, file=sys.stderr)


def end_bars() -> None:
    """Ends the bars still open (a run stopped mid-loop), so that what is printed
    next starts on a line of its own instead of after a bar's last update."""
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # another thread may be drawing it: the line still follows
            pass
