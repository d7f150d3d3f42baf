"""Checkpoints without the frozen backbone: it is rebuilt from ``backbone=`` (its own weights file), so a checkpoint
holds only what trains (a few MB instead of 170 MB for ResNet101)."""
from __future__ import annotations

from typing import Any

from .backbones.weights import weights_identity
from .data.features import FrozenEncoder

BACKBONE_PREFIX = "net.backbone."


class FrozenBackboneCheckpoint:
    """Mixin for LightningModules whose network ``self.net`` has a ``backbone`` that is frozen except, possibly,
    some parameters that train (kept in the checkpoint)."""

    def drop_frozen_backbone(self, state_dict: dict[str, Any], prefix: str = BACKBONE_PREFIX) -> dict[str, Any]:
        """Remove the backbone's frozen entries (parameters without gradient, and buffers) from ``state_dict``."""
        trained = {prefix + n for n, p in self.net.backbone.named_parameters() if p.requires_grad}
        for k in [k for k in state_dict if k.startswith(prefix) and k not in trained]:
            del state_dict[k]
        return state_dict

    def frozen_encoder(self) -> FrozenEncoder:
        """The frozen backbone as the training feature store sees it (``data.features=cached``): its maps, keyed by
        the backbone's name, stride and weights identity."""
        b = self.hparams.backbone
        return FrozenEncoder(self.net.backbone, {"backbone": b["name"], "stride": self.net.backbone.stride,
                                                 "weights": weights_identity(str(b.get("weights", "imagenet")), 0)})

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001
        full = {f"{BACKBONE_PREFIX}{k}": v for k, v in self.net.backbone.state_dict().items()}
        full.update(state_dict)  # the frozen backbone is not stored: take it from the module as built
        return super().load_state_dict(full, strict=strict, assign=assign)
