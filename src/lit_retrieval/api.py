"""Using a method from Python (a notebook, a script): the objects ``eval.py`` uses, built from a name and overrides.

:func:`build` composes ``eval.py``'s configuration (``conf/eval.yaml``) with the method and the overrides given, checks
it as ``eval.py`` does and returns a :class:`Method`: :meth:`Method.describe` gives the method's global descriptors
of some images, :meth:`Method.index` indexes a folder (or a list of files) and :meth:`Index.search` searches it with
query images, :meth:`Method.evaluate` runs the whole evaluation of a benchmark (the ``eval.py`` run, with its
``results.json``, pictures and report). The guide with examples is ``docs/python.md``.
"""
from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .cli import project_root, override_hints

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PathLike = str | Path
_PLAIN = re.compile(r"^[\w./:@+~-]*$")


def _override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override grammar (``dataset__root`` -> ``dataset.root``; strings quoted if needed)."""
    key = key.replace("__", ".")
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(_override("_", v).partition("=")[2] for v in value) + "]"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = str(value)
        if not _PLAIN.match(text) or text == "":
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def compose_eval(overrides: Sequence[str]) -> DictConfig:
    """``conf/eval.yaml`` composed with ``overrides`` (Hydra's compose API), or a ``ValueError`` naming the closest
    valid key or choice of a misspelt one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = project_root()
    if not (root / "conf" / "eval.yaml").is_file():
        raise FileNotFoundError(f"{root / 'conf' / 'eval.yaml'} not found: the Python API composes the checkout's "
                                "conf/. Fix: install the checkout editable (pip install -e . / uv pip install -e .) "
                                "or set LIT_RETRIEVAL_ROOT to the checkout")
    args = [f"paths.root_dir={root}", *overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
            return compose("eval", overrides=args)
    except Exception as err:  # noqa: BLE001 - Hydra's composition errors, re-raised with the closest spellings
        hints = override_hints("eval", list(overrides))
        raise ValueError(f"the settings {list(overrides)} do not compose: {err}"
                         + "".join(f"\n  {h}" for h in hints)) from None
    finally:
        GlobalHydra.instance().clear()


def image_files(images: PathLike | Iterable[PathLike]) -> list[Path]:
    """A folder (every image file under it, sorted) or a list of files, as paths; an empty or missing one is an
    error that says what was looked at."""
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {images}")
        return files
    files = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image files do not exist: {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''}")
    if not files:
        raise ValueError("no images given: pass a folder or a list of image files")
    return files


@dataclass
class SearchResult:
    """The database images found for each query, best first.

    Attributes:
        queries: the query image files.
        ranks: ``Nq×k`` database indices per query.
        scores: ``Nq×k`` similarities of ``ranks`` (``None`` where the method keeps none, e.g. after re-ranking).
        database: the indexed image files (``ranks`` index them).
    """

    queries: list[Path]
    ranks: np.ndarray
    scores: np.ndarray | None
    database: list[Path]

    def paths(self, query: int = 0) -> list[Path]:
        """The files found for query ``query``, best first."""
        return [self.database[i] for i in self.ranks[query]]


class Method:
    """One retrieval method with its settings, as :func:`build` gives it (see the module docstring)."""

    def __init__(self, cfg: DictConfig, overrides: list[str], out_dir: Path) -> None:
        from .options import check_eval_options
        from .retrieval.interface import build_retriever

        check_eval_options(cfg)
        self.cfg, self.overrides, self.out_dir = cfg, overrides, out_dir
        self.retriever = build_retriever(str(cfg.method.name))
        self.retriever.check(cfg)
        self.name = str(cfg.method.name)
        self._backbone = None

    def __repr__(self) -> str:
        return f"Method({self.name!r}, {', '.join(self.overrides[1:]) or 'defaults'})"

    @property
    def backbone(self) -> Any:
        """The backbone (built on first use, on ``device``)."""
        if self._backbone is None:
            from .backbones import build_backbone

            self._backbone = build_backbone(self.cfg.backbone.name, weights=str(self.cfg.backbone.weights))
            self._backbone.to(self.cfg.device).eval()
        return self._backbone

    @property
    def is_global(self) -> bool:
        """Whether the method describes an image by one vector (mac, spoc, gem, crow, rmac, regional attention)."""
        from .retrieval.global_retriever import GlobalRetriever

        return isinstance(self.retriever, GlobalRetriever)

    def _learned(self, dataset: Any) -> Any:
        from .data.provenance import LearnedSets, set_cache_dir

        return LearnedSets(dataset, set_cache_dir(Path(str(self.cfg.paths.cache_dir)) / "content"))

    def describe(self, images: PathLike | Iterable[PathLike], *, progress: bool = False) -> np.ndarray:
        """The method's global descriptors of ``images`` (a folder or files): ``N×D`` float32, L2-normalised, at
        ``image_size`` and ``scales`` as ``eval.py`` describes a database (no whitening: :meth:`index` learns and
        applies the configured one)."""
        from .retrieval.extract import ImageItem, extract
        from .retrieval.extractor import loading
        from .retrieval.methods import build_method

        if not self.is_global:
            raise ValueError(f"method={self.name} has no global descriptor (it compares regions or local features):"
                             " use index(...) then search(...)")
        from .data import RetrievalDataset

        files = image_files(images)
        described = RetrievalDataset("described", files, [], [], [], root=files[0].parent)
        params = self.retriever.method_params(self.cfg, self.backbone, self._learned(described))
        net = build_method(self.name, self.backbone, **params).to(self.cfg.device).eval()
        vectors, _ = extract([ImageItem(p) for p in files], net, self.backbone.normalize,
                             loading(self.cfg, progress=progress), scales=[float(s) for s in self.cfg.scales],
                             power=net.power, desc=f"{self.name}/describe")
        return vectors

    def index(self, images: PathLike | Iterable[PathLike], name: str | None = None) -> Index:
        """Index ``images`` (a folder or files) as ``eval.py`` indexes a database: global methods describe them now
        (cached) and learn the configured whitening on its own dataset (checked to share no image with them); the
        other methods index them with each search."""
        from .data import RetrievalDataset

        files = image_files(images)
        dataset = RetrievalDataset(name or f"folder-{Path(files[0]).parent.name}", files, [], [], [],
                                   root=Path(files[0]).parent)
        built = None
        if self.is_global:
            built = self.retriever.index(self.cfg, dataset, self.backbone, self._learned(dataset), self.out_dir)
        return Index(self, dataset, built)

    def evaluate(self, dataset: str = "embedded", out_dir: PathLike | None = None, **keys: Any) -> dict[str, Any]:
        """The ``eval.py`` run of this method on a benchmark (``dataset``: a ``conf/dataset`` choice; ``keys``: its
        settings, e.g. ``root=..., name=...``): the results dict of ``results.json``, whose files (pictures, report)
        are in ``out_dir`` (default: a new folder under this method's ``out_dir``)."""
        from .evaluate import run_eval

        run_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="eval-", dir=self.out_dir))
        overrides = [*self.overrides, f"dataset={dataset}", *(_override(f"dataset.{k}", v) for k, v in keys.items()),
                     f"paths.output_dir={run_dir}"]
        return run_eval(compose_eval(overrides), run_dir)


class Index:
    """Indexed images that can be searched (:meth:`Method.index`)."""

    def __init__(self, method: Method, dataset: Any, built: Any) -> None:
        self.method, self.dataset, self.built = method, dataset, built

    def __len__(self) -> int:
        return self.dataset.n_db

    def search(self, queries: PathLike | Iterable[PathLike], k: int = 10,
               boxes: Sequence[Sequence[float] | None] | None = None) -> SearchResult:
        """The ``k`` best database images for each query image (``boxes``: per query ``[x1, y1, x2, y2]`` pixels
        to crop it to, as a benchmark's query boxes), through the method's search and post-processing stages."""
        from .data import RetrievalDataset

        m, db = self.method, self.dataset
        files = image_files(queries)
        boxes = list(boxes) if boxes is not None else [None] * len(files)
        if len(boxes) != len(files):
            raise ValueError(f"{len(boxes)} boxes for {len(files)} queries: give one box (or None) per query")
        empty = {key: np.zeros(0, np.int64) for key in ("easy", "hard", "junk")}
        full = RetrievalDataset(db.name, db.db_paths, files, boxes, [dict(empty) for _ in files], root=db.root)
        if self.built is not None:
            rankings = m.retriever.rank_queries(m.cfg, self.built, full, m.backbone)
        else:
            rankings = m.retriever.rank(m.cfg, full, m.backbone, m._learned(full), m.out_dir, time.perf_counter())
        k = min(int(k), db.n_db)
        scores = None if rankings.scores is None or rankings.stages else np.asarray(rankings.scores)[:, :k]
        return SearchResult(files, np.asarray(rankings.ranks)[:, :k], scores, list(db.db_paths))


def build(method: str, *overrides: str, out_dir: PathLike | None = None, **settings: Any) -> Method:
    """A retrieval method from its name (``eval.py method=...``) and settings, e.g.
    ``build("gem", backbone="efficientnet_lite0", image_size=512)`` or ``build("rmac", "qe=avg", whitening="pca")``.

    ``settings`` are ``eval.py`` overrides as keywords (a config group's choice, ``backbone="resnet101"``, or a key,
    ``image_size=1024``; ``method__p=4`` is ``method.p=4``); ``overrides`` are the same as Hydra strings
    (``"method.p=4"``). ``out_dir``: where the method writes what it learns (a learned whitening), default a new
    temporary folder. A misspelt key or choice is a ``ValueError`` naming the closest valid one.
    """
    args = [f"method={method}", *overrides, *(_override(k, v) for k, v in settings.items())]
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="lit-retrieval-"))
    folder.mkdir(parents=True, exist_ok=True)
    cfg = compose_eval(args)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(folder)
    OmegaConf.set_struct(cfg, True)
    return Method(cfg, args, folder)


__all__ = ["Index", "Method", "SearchResult", "build", "compose_eval", "image_files"]
