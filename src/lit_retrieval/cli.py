"""What ``eval.py`` and ``train.py`` do with a user's mistake: one clear message and exit status 2, no traceback."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

TRACEBACK_ENV = "LIT_RETRIEVAL_TRACEBACK"


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
