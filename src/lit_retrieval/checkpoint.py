"""Reading the entry a training module writes into its checkpoints (everything a model needs at test time)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def read_entry(ckpt_path: str | Path, key: str, model: str,
               map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """The ``key`` entry of a ``train.py model=<model>`` checkpoint, with errors that name the fix."""
    p = Path(ckpt_path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found ({p}). Fix: pass ckpt_path=RUN/checkpoints/best.ckpt of a "
                                f"`python train.py model={model} ...` run")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, not a torch file, or unsafe content: all unreadable
        raise ValueError(f"cannot read checkpoint {p} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                         f"Fix: pass an intact checkpoint written by `python train.py model={model}` "
                         "(RUN/checkpoints/best.ckpt or last.ckpt)") from None
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise ValueError(f"{p} is not a {model.replace('_', '-')} checkpoint (no {key!r} entry). Fix: use a "
                         f"checkpoint written by `python train.py model={model}`")
    return ckpt[key], p


TRAINING_CONTENT = "training_content"  # the content keys of the training data (written by the retrieval callback)


def training_content(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The content record of the images a checkpoint was trained on (``ContentSet.state_dict()``), or ``None``
    when the run did not record it (no retrieval callback, or a training set too large to hash)."""
    ckpt = torch.load(Path(ckpt_path), map_location="cpu", weights_only=True)
    return ckpt.get(TRAINING_CONTENT)


def check_backbone(entry_backbone: str, backbone: nn.Module, p: Path) -> None:
    if backbone.name != entry_backbone:
        raise ValueError(f"{p} was trained on backbone {entry_backbone!r}, not {backbone.name!r}. Fix: pass "
                         f"backbone={entry_backbone}")


def load_trained_state(net: nn.Module, state_dict: dict[str, Any], p: Path) -> None:
    """Load what training stored (the frozen backbone is not stored: its keys may be missing)."""
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"{p}: checkpoint does not match the network (missing {missing}, unexpected {unexpected})")
