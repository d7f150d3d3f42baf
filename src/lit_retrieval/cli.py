"""What ``eval.py`` and ``train.py`` do with a user's mistake: one clear message and exit status 2, no traceback."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

TRACEBACK_ENV = "LIT_RETRIEVAL_TRACEBACK"

# Keys that moved under their method (D2R's settings were first written at the top level, its detector checkpoint
# as detector.ckpt_path): the former spellings are still accepted as overrides, with one warning each.
RENAMED_KEYS = {
    "kernel": "method.kernel",
    "aggregation": "method.aggregation",
    "detector.threshold": "method.detector.threshold",
    "detector.max_boxes": "method.detector.max_boxes",
    "detector.ckpt_path": "ckpt_path",
}
_warned: set[str] = set()


def renamed_overrides(args: list[str]) -> list[str]:
    """``args`` (Hydra overrides; flags and other arguments pass unchanged) with the former spellings of
    :data:`RENAMED_KEYS` replaced by the current keys, warning once per spelling."""
    out = []
    for arg in args:
        body = arg.lstrip("+~")
        key, eq, value = body.partition("=")
        new = RENAMED_KEYS.get(key) if not arg.startswith("-") else None
        if new is not None:
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"{key}= is now {new}= (the old spelling still works)", FutureWarning, stacklevel=2)
            arg = arg[: len(arg) - len(body)] + new + eq + value
        out.append(arg)
    return out


@contextmanager
def reported_errors(tool: str) -> Iterator[None]:
    """Bad input (a ``ValueError``: bad options, data, ground truth, leakage; an ``OSError``: missing or unwritable
    files) ends the run with its message, which names what is wrong and the fix, and exit status 2.
    ``LIT_RETRIEVAL_TRACEBACK=1`` re-raises it with the full traceback."""
    try:
        yield
    except (ValueError, OSError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        logging.getLogger(tool).error("%s: %s", type(err).__name__, err)
        print(f"{tool}: error: {err}\n({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
