"""What a learned component saw, by image content: content keys, content sets and their overlap.

Nothing is learned on the evaluated images unless the user asks for it. To check that by *content* (a renamed,
copied or re-encoded-to-PNG copy of an evaluated image is still that image), every image gets a **content key**:
a hash of its decoded pixels (mode, size and bytes), never of its name. Generated images also carry the keys of
what they were built from (the backgrounds and object source images of a cut-and-paste benchmark), so a set
built from the same sources as an evaluated benchmark overlaps it even when no file is shared. Procedural
sources (no files) are keyed by their generator identity (``procedural:<seed>:<i>``, ``procedural-bg:<seed>:<i>``):
instance ``i`` of seed ``s`` is the same pixels wherever it is rendered.

- :class:`ContentHasher`: pixel hashes, memoised on disk by (path, size, mtime) under ``<cache>/content/``.
- :class:`ContentSet`: the keys of a set of images (and their sources), with a digest of the whole set.
- :func:`check_disjoint`: the overlap of a learning set with the evaluated set; a clear error naming the
  overlapping files, or a warning when the user opted in (transductive); returns what ``results.json`` records.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image
from tqdm.auto import tqdm

from ..atomic import atomic_json
from .errors import DataError

log = logging.getLogger(__name__)

#: keys of sources that are not files (procedural generators) start with one of these
GENERATED_PREFIXES = ("procedural:", "procedural-bg:")
_MAX_LISTED = 5


class LeakageError(DataError):
    """A learned component would be learned on (part of) the images being evaluated."""


KEY_VERSION = 2  # bump when what a content key covers changes (memoised keys of another version are dropped)


def pixel_key(path: str | os.PathLike[str]) -> str:
    """Hash of the decoded pixels of an image file and of its EXIF orientation (which changes the image the
    loaders produce) (``px:``), or of its bytes when it does not decode (``raw:``)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with Image.open(path) as img:
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:o{orientation}:".encode())
            h.update(img.tobytes())
        return "px:" + h.hexdigest()
    except (OSError, ValueError, Image.DecompressionBombError):
        with open(path, "rb") as f:  # unreadable as an image: its bytes still identify it
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "raw:" + h.hexdigest()


class ContentHasher:
    """Content keys of image files, memoised in memory and (with ``cache_dir``) on disk.

    The on-disk memo holds one JSON file per image folder, ``{name: [size, mtime_ns, key]}``: a file whose size
    or modification time changed is hashed again, so a replaced image never keeps its old key."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, workers: int = 2) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.workers = workers
        self._memo: dict[Path, dict[str, list]] = {}

    def _folder_memo_file(self, folder: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.blake2b(str(folder).encode(), digest_size=10).hexdigest()}.json"

    def _folder_memo(self, folder: Path) -> dict[str, list]:
        if folder not in self._memo:
            memo: dict[str, list] = {}
            f = self._folder_memo_file(folder)
            if f is not None and f.is_file():
                try:
                    data = json.loads(f.read_text())
                    if data.get("folder") == str(folder) and data.get("version") == KEY_VERSION:
                        memo = data["files"]
                except (OSError, ValueError, KeyError, TypeError):
                    memo = {}  # a damaged memo is only a lost speed-up
            self._memo[folder] = memo
        return self._memo[folder]

    def keys(self, paths: Sequence[str | os.PathLike[str]], desc: str = "content keys",
             missing_ok: bool = False) -> list[str]:
        """The content key of every file of ``paths`` (same order); ``missing_ok``: a missing or unreadable file
        gets ``missing:<path>`` (the loaders report it) instead of an error."""
        files = [Path(p).resolve() for p in paths]
        stats: list[os.stat_result | None] = []
        for f in files:
            try:
                stats.append(f.stat())
            except OSError:
                if not missing_ok:
                    raise
                stats.append(None)
        out: list[str | None] = [None] * len(files)
        todo = []
        for i, (f, st) in enumerate(zip(files, stats)):
            if st is None:
                out[i] = f"missing:{f}"
                continue
            hit = self._folder_memo(f.parent).get(f.name)
            if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
                out[i] = hit[2]
            else:
                todo.append(i)
        if todo:
            key_of = _missing_ok_key if missing_ok else pixel_key
            with ThreadPoolExecutor(max(1, self.workers)) as pool:  # PIL decodes without the GIL
                computed = list(tqdm(pool.map(key_of, [files[i] for i in todo]), total=len(todo), desc=desc,
                                     disable=len(todo) < 200, leave=False))
            dirty = set()
            for i, key in zip(todo, computed):
                out[i] = key
                if key.startswith("missing:"):
                    continue
                self._folder_memo(files[i].parent)[files[i].name] = [stats[i].st_size, stats[i].st_mtime_ns, key]
                dirty.add(files[i].parent)
            for folder in dirty:
                memo_file = self._folder_memo_file(folder)
                if memo_file is not None:
                    try:
                        atomic_json({"folder": str(folder), "version": KEY_VERSION, "files": self._memo[folder]},
                                    memo_file)
                    except OSError as e:  # a read-only cache costs only speed
                        log.warning("could not write the content-key memo %s (%s)", memo_file, e)
        return [k for k in out if k is not None]


def _missing_ok_key(path: Path) -> str:
    try:
        return pixel_key(path)
    except OSError:  # vanished or unreadable between stat and read
        return f"missing:{path}"


_DEFAULT = ContentHasher()


def default_hasher() -> ContentHasher:
    return _DEFAULT


def set_cache_dir(cache_dir: str | os.PathLike[str] | None) -> ContentHasher:
    """Memoise content keys under ``cache_dir`` from now on (``eval.py``/``train.py``: ``<cache>/content``)."""
    global _DEFAULT
    if _DEFAULT.cache_dir != (None if cache_dir is None else Path(cache_dir)):
        _DEFAULT = ContentHasher(cache_dir)
    return _DEFAULT


def item_keys(items: Sequence[Any], hasher: ContentHasher | None = None) -> list[list[Any]]:
    """Cache-key entries of image items (``ImageItem``: ``path``, ``bbx``): each image's content key, not its
    path, with its box, so a file replaced in place (or a benchmark rebuilt under the same names) is never served
    another image's cached descriptor. Keys are memoised by (path, size, mtime)."""
    keys = (hasher or _DEFAULT).keys([i.path for i in items], desc="content keys (cache)", missing_ok=True)
    return [[k, None if i.bbx is None else [float(v) for v in i.bbx]] for k, i in zip(keys, items)]


@dataclass
class ContentSet:
    """The content keys of a set of images (and of what they were generated from).

    ``keys`` maps a content key to a readable label (the first file or source that has it); ``n_images`` is the
    number of images in the set (sources not counted)."""

    name: str
    keys: dict[str, str] = field(default_factory=dict)
    n_images: int = 0

    @property
    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for k in sorted(self.keys):
            h.update(k.encode() + b"\n")
        return h.hexdigest()

    def __or__(self, other: "ContentSet") -> "ContentSet":
        return ContentSet(f"{self.name}+{other.name}", {**other.keys, **self.keys}, self.n_images + other.n_images)

    def overlap(self, other: "ContentSet") -> list[tuple[str, str]]:
        """``(label here, label there)`` of every key both sets have."""
        return [(self.keys[k], other.keys[k]) for k in sorted(self.keys.keys() & other.keys.keys())]

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.name, "n_images": self.n_images, "digest": self.digest}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores so that evaluation can check what its learned parts saw."""
        return {"name": self.name, "n_images": self.n_images, "keys": sorted(self.keys), "digest": self.digest}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ContentSet":
        return cls(str(state["name"]), {k: f"{state['name']} image ({k[:12]})" for k in state["keys"]},
                   int(state["n_images"]))


def source_keys(sources: Iterable[str], hasher: ContentHasher | None = None) -> dict[str, str]:
    """Keys of generation sources: generator identities as they are, files by their pixels."""
    hasher = hasher or _DEFAULT
    out: dict[str, str] = {}
    files = []
    for s in dict.fromkeys(str(s) for s in sources):
        if s.startswith(GENERATED_PREFIXES):
            out["gen:" + s] = s
        elif Path(s).is_file():
            files.append(s)
        else:
            out["name:" + s] = s  # a source that is gone: its name is all that is left to compare
    for s, k in zip(files, hasher.keys(files, desc="content keys (sources)")):
        out.setdefault(k, s)
    return out


def content_of_files(name: str, paths: Sequence[str | os.PathLike[str]], sources: Iterable[str] = (),
                     hasher: ContentHasher | None = None) -> ContentSet:
    """The content set of image files ``paths`` plus the ``sources`` they were generated from."""
    hasher = hasher or _DEFAULT
    keys: dict[str, str] = {}
    for p, k in zip(paths, hasher.keys(list(paths), desc=f"content keys ({name})")):
        keys.setdefault(k, str(p))
    for k, label in source_keys(sources, hasher).items():
        keys.setdefault(k, label)
    return ContentSet(name, keys, len(paths))


def content_of_generator(name: str, sources: Iterable[str], n_images: int,
                         hasher: ContentHasher | None = None) -> ContentSet:
    """The content set of images generated on the fly (training pairs, boxes) from ``sources``."""
    return ContentSet(name, source_keys(sources, hasher), n_images)


def dataset_content(dataset: Any, parts: Sequence[str] = ("db", "query"),
                    hasher: ContentHasher | None = None) -> ContentSet:
    """The content set of a ``RetrievalDataset``'s database and/or queries, with the sources it was built from."""
    paths: list[Path] = []
    if "db" in parts:
        paths += list(dataset.db_paths)
    if "query" in parts:
        paths += list(dataset.query_paths)
    paths = list(dict.fromkeys(paths))  # classic protocol: queries are database images
    return content_of_files(dataset.name, paths, getattr(dataset, "sources", ()), hasher)


def check_disjoint(learned: ContentSet, evaluated: ContentSet, what: str, option: str,
                   transductive: bool = False, opt_in: str | None = None, fix: str | None = None) -> dict[str, Any]:
    """Check that ``what`` (learned on ``learned``) saw none of the ``evaluated`` images, by content.

    Overlap is a :class:`LeakageError` naming the shared files and ``option``, the setting that picks the
    learning set, and ``opt_in`` (default ``<option>.kind=transductive``), the setting that allows it; with
    ``transductive`` (the user asked to learn on the evaluated images) it is a warning. ``fix`` replaces the
    default advice (pick another learning set) where the set is not an option, e.g. a checkpoint's training data.
    Returns the record ``results.json`` keeps: the learning set's name, size and digest and the overlap."""
    shared = learned.overlap(evaluated)
    record = {**learned.summary(), "overlap": len(shared), "transductive": bool(transductive)}
    if shared:
        record["overlapping"] = [b for _, b in shared[:_MAX_LISTED]]
        listed = "; ".join(f"{a} = {b}" for a, b in shared[:_MAX_LISTED])
        more = f" and {len(shared) - _MAX_LISTED} more" if len(shared) > _MAX_LISTED else ""
        if transductive:
            msg = (f"{what} is learned on the evaluated images ({len(shared)} shared with {evaluated.name}: "
                   f"transductive, as asked): its numbers are not held-out test numbers")
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
        else:
            raise LeakageError(
                f"{what} would be learned on {len(shared)} image(s) of the evaluated set {evaluated.name!r} "
                f"(same content): {listed}{more}", None,
                (fix or f"set {option} to a dataset disjoint from {evaluated.name!r} (by default a procedural "
                 f"benchmark of another seed)") + ", or opt in to learning on the evaluated images with "
                f"{opt_in or option + '.kind=transductive'}")
    return record


class LearnedSets:
    """Every component a run learns, checked against the evaluated dataset by content; ``records`` is what
    ``results.json`` keeps under ``learned`` (one entry per component: the set, its size and digest, the overlap).

    The evaluated set (database and queries, with their generation sources) is hashed once, on first use."""

    def __init__(self, evaluated: Any, hasher: ContentHasher | None = None) -> None:
        self.dataset, self.hasher = evaluated, hasher
        self._evaluated: ContentSet | None = None
        self.records: dict[str, dict[str, Any]] = {}

    @property
    def evaluated(self) -> ContentSet:
        if self._evaluated is None:
            self._evaluated = dataset_content(self.dataset, hasher=self.hasher)
        return self._evaluated

    def check(self, component: str, learned: ContentSet, option: str, transductive: bool = False,
              opt_in: str | None = None, fix: str | None = None) -> dict[str, Any]:
        """:func:`check_disjoint` of ``learned`` against the evaluated set, recorded under ``component``."""
        self.records[component] = check_disjoint(learned, self.evaluated, component, option, transductive, opt_in,
                                                 fix)
        return self.records[component]

    def check_dataset(self, component: str, dataset: Any, option: str,
                      parts: Sequence[str] = ("db",)) -> dict[str, Any]:
        """The component is learned on ``parts`` of another ``RetrievalDataset``."""
        return self.check(component, dataset_content(dataset, parts, self.hasher), option)

    def check_files(self, component: str, name: str, paths: Sequence[str | os.PathLike[str]],
                    option: str) -> dict[str, Any]:
        """The component is learned on image files ``paths`` (e.g. a folder's split part)."""
        return self.check(component, content_of_files(name, paths, hasher=self.hasher), option)

    def transductive(self, component: str, option: str, parts: Sequence[str] = ("db",)) -> dict[str, Any]:
        """The user asked to learn the component on the evaluated images themselves: recorded, and a warning."""
        return self.check(component, dataset_content(self.dataset, parts, self.hasher), option, transductive=True)


TRANSDUCTIVE_KINDS = ("transductive", "same")  # "same": the former name of learning on the evaluated database


def is_transductive(source: Mapping[str, Any] | None) -> bool:
    """Whether a learning-set config (``{kind: ...}``) names the evaluated dataset itself."""
    return source is not None and source.get("kind") in TRANSDUCTIVE_KINDS
