"""The in-memory description of a retrieval benchmark, shared by every dataset format.

A ``RetrievalDataset`` is what the retrieval engine consumes: database image paths, query image paths
with optional query boxes, and per-query ground truth. Loaders for the revisited format, the classic
format and the synthetic benchmarks all return one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

Protocol = Literal["revisited", "classic"]


@dataclass
class RetrievalDataset:
    """A retrieval benchmark.

    Attributes:
        name: short name (``roxford5k``, ``embedded``...), used in cache keys and result files.
        db_paths: database image files, index ``i`` is database image ``i``.
        query_paths: query image files (for the classic protocol these are database images too).
        query_bbx: per query ``[x1, y1, x2, y2]`` in original-image pixels, or ``None`` (no crop).
        gnd: per-query ground truth. Revisited: dicts with ``easy``, ``hard``, ``junk`` index arrays.
            Classic: dicts with ``ok`` and ``junk`` index arrays.
        protocol: ``"revisited"`` (Easy/Medium/Hard) or ``"classic"`` (single mAP).
        root: folder the dataset was read from (for messages and cache keys).
        skipped: images left out when loading.
        sources: what generated images were built from (background files, object source images, procedural
            generator identities), read from a cut-and-paste benchmark's ground truth; empty for real datasets.
            Content checks (:mod:`.provenance`) count them as part of the dataset.
        object_boxes: per database image index, the ``[x1, y1, x2, y2]`` boxes (stored-image pixels, exclusive
            ends) of the objects a cut-and-paste benchmark pasted there (query objects and distractor objects);
            empty for real datasets, which do not record them.
        distractors: where the distractor images appended to the database start (``dataset.distractors``), their
            set's name and folder; ``None`` without distractors.
    """

    name: str
    db_paths: list[Path]
    query_paths: list[Path]
    query_bbx: list[Sequence[float] | None]
    gnd: list[dict[str, np.ndarray]]
    protocol: Protocol = "revisited"
    root: Path | None = None
    skipped: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    object_boxes: dict[int, list[list[float]]] = field(default_factory=dict)
    distractors: Any = None  # data.distractors.Distractors: the database's tail of distractor images, or None

    def __post_init__(self) -> None:
        if len(self.query_paths) != len(self.gnd):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.query_paths)} queries but {len(self.gnd)} ground-truth "
                "entries; the gnd file must have one entry per query"
            )
        if len(self.query_bbx) != len(self.query_paths):
            raise ValueError(f"dataset {self.name!r}: query_bbx must have one entry (box or None) per query")

    @property
    def n_db(self) -> int:
        return len(self.db_paths)

    @property
    def n_queries(self) -> int:
        return len(self.query_paths)
