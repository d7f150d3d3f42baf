"""lit-retrieval: learned region scoring for instance-level image retrieval, evaluated against the field's
non-learned baselines.

From Python (``docs/python.md``)::

    import lit_retrieval
    retriever = lit_retrieval.build("gem", backbone="efficientnet_lite0")
    hits = retriever.index("photos/").search(["query.jpg"], k=10)
"""
from __future__ import annotations

from typing import Any

__all__ = ["build"]


def build(method: str, *overrides: str, **settings: Any):
    """A retrieval method from its name and settings: :func:`lit_retrieval.api.build` (imported on first use, so that
    ``import lit_retrieval`` stays light)."""
    from .api import build as _build

    return _build(method, *overrides, **settings)
