"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` (never a half-written file)."""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()


def shared_mode(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (``0o666``/``0o777`` under the umask):
    ``tempfile`` creates 0600 files and 0700 folders, which would make a shared cache or dataset unreadable by
    a colleague."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def make_temp_dir(prefix: str, parent: str | Path) -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with umask-respecting permissions (renamed into place by the caller)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    shared_mode(tmp, directory=True)
    return tmp


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then move it onto ``path`` (with the
    permissions of a plain ``open``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        shared_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_pickle(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=4))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``: strict JSON that every reader parses."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as strict JSON (NaN → ``null``) atomically."""
    text = json.dumps(strict_json(obj), indent=2, default=str, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))
