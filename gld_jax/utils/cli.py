"""absl flag parsing for the command-line tools: a bad flag or config key is
one line on stderr and exit code 2, not a traceback."""

from __future__ import annotations

from absl import flags


def parse_flags(argv: list[str]) -> None:
    try:
        flags.FLAGS(argv)
    except (
        flags.Error,
        AttributeError,
        KeyError,
        ValueError,
        TypeError,
        FileNotFoundError,
        OSError,
        SyntaxError,
    ) as e:
        msg = str(e).strip().strip('"').strip("'")
        raise SystemExit(f"error: {msg}") from None
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is None:
        raise SystemExit("error: --config is required, e.g. --config configs/demo.py")
