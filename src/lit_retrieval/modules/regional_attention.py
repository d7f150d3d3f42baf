"""LightningModule for Kim & Yoon's regional attention: classification training through the frozen head.

Only the attention parameters train (SGD, lr 1e-3, momentum 0.9, weight decay 5e-5; the learning rate drops
10× when the validation classification error has not improved for ``scheduler.patience`` validations).
The regional PCA-whitening ``P`` depends on the frozen backbone and the regions only, not on the trained weights, so it is learned once when fitting starts (before
the first retrieval evaluation needs it) on ``whitening.dataset``, and stored in every checkpoint with the
attention weights and the region settings. Checkpoints leave out the frozen backbone's weights (rebuilt from
``backbone.name``/``backbone.weights``): a ResNet101 checkpoint is a few MB, not 170 MB.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone, build_backbone
from ..data import load_dataset
from ..data.provenance import ContentSet, content_of_files
from ..models import RegionalAttentionNet, UniformRegions
from ..models.regional_attention import CKPT_KEY
from ..retrieval.regional import collect_regional_vectors, learn_regional_whitening
from ..whitening import Whitening
from .frozen import FrozenBackboneCheckpoint

log = logging.getLogger(__name__)


class RegionalAttentionModule(FrozenBackboneCheckpoint, pl.LightningModule):
    """``scales``/``train_scales``/``grid``/``context``/``hidden``/``aggregate``: :class:`RegionalAttentionNet`
    settings (``scales`` is the test scale S); ``whitening``: ``{kind: pca|none, dims, dataset: <dataset
    config>, max_images, image_size}``; ``optimizer``/``scheduler``: SGD and plateau settings."""

    _val_counts: Tensor

    def __init__(self, backbone: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any],
                 whitening: dict[str, Any], scales: int = 5, train_scales: int = 4, grid: str = "rmac",
                 context: bool = True, hidden: int = 64, aggregate: str = "mean",
                 hidden_activation: str = "tanh") -> None:
        super().__init__()
        self.save_hyperparameters()
        bb = build_backbone(backbone["name"], weights=str(backbone.get("weights", "imagenet")))
        self.net = RegionalAttentionNet(bb, scales=scales, train_scales=train_scales, grid=grid, context=context,
                                        hidden=hidden, aggregate=aggregate, hidden_activation=hidden_activation,
                                        pca_input=str(whitening.get("input", "l2")))

    @property
    def backbone(self) -> Backbone:
        return self.net.backbone

    # -- training -------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """``[0, 1]`` images -> ImageNet logits (eq. 4)."""
        return self.net.classify(self.backbone.normalize(images))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        wrong = logits.argmax(dim=1) != labels
        err = wrong.float().mean()
        if stage == "val":
            self._val_counts += torch.stack([wrong.sum(), torch.tensor(len(labels), device=wrong.device)]).cpu()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=stage == "val", batch_size=len(labels))
        self.log(f"{stage}/error", err, prog_bar=stage == "val", sync_dist=stage == "val", batch_size=len(labels))
        if stage == "train":
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(2, dtype=torch.long)  # wrong, seen

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Step the plateau schedule on this validation's classification error (all ranks' counts).

        Stepped here rather than by Lightning at the epoch's end so that the checkpoints written at the end of
        this validation already hold the stepped schedule: a resumed run then follows the same schedule
        (Lightning skips plateau steps when it restarts from such a checkpoint)."""
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        counts = self.trainer.strategy.reduce(self._val_counts.to(self.device).float(), reduce_op="sum")
        error = float(counts[0] / counts[1].clamp_min(1))
        self.lr_schedulers().step(error)

    def configure_optimizers(self) -> dict[str, Any]:
        o, s = self.hparams.optimizer, self.hparams.scheduler
        opt = torch.optim.SGD(self.net.attention.parameters(), lr=float(o["lr"]), momentum=float(o["momentum"]),
                              weight_decay=float(o["weight_decay"]))
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(s["factor"]),
                                                           patience=int(s["patience"]), min_lr=float(s["min_lr"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/error", "interval": "epoch",
                                                   "strict": False}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """No-op: the plateau schedule is stepped in :meth:`on_validation_epoch_end`."""

    def train(self, mode: bool = True) -> RegionalAttentionModule:
        super().train(mode)
        self.net.backbone.train(False)  # frozen BatchNorm statistics, whatever Lightning asks
        return self

    # -- whitening ------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.whitening.get("kind", "pca") == "none" or self.net.whitened:
            return  # none wanted, or restored from the checkpoint being resumed
        self.net.set_whitening(self.learn_whitening())

    def learn_whitening(self) -> Whitening:
        """PCA-whitening of the L2 regional vectors (test scale) of ``whitening.dataset``'s database images."""
        w = self.hparams.whitening
        data = load_dataset(w["dataset"])
        paths = list(data.db_paths)[: w.get("max_images") or None]
        self.net.content["regional_attention_whitening"] = content_of_files(data.name, paths, data.sources)
        X = collect_regional_vectors(paths, self.net.regional_vectors, self.backbone.normalize,
                                     w.get("image_size"), self.device, desc=f"{data.name}/whitening",
                                     progress=self.global_rank == 0)
        return learn_regional_whitening(X, w.get("dims"), f"{data.name} ({len(paths)} images)",
                                        "use a larger model.whitening.dataset or reduce with model.whitening.dims")

    # -- retrieval (used by the RetrievalEvaluation callback) ------------------------------------------
    def learned_content(self) -> dict[str, ContentSet]:
        """What the learned parts besides the training data saw (the regional whitening's images)."""
        return self.net.learned_content()

    def retrieval_methods(self) -> dict[str, nn.Module]:
        """Methods whose descriptors change with training (re-extracted at every retrieval evaluation)."""
        return {"regional_attention": self.net}

    def fixed_retrieval_methods(self) -> dict[str, nn.Module]:
        """Same-backbone references that training does not change (computed once per run)."""
        return {"rmac_uniform": UniformRegions(self.net)}

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = self.drop_frozen_backbone(checkpoint["state_dict"])
        checkpoint[CKPT_KEY] = {"config": self.net.config(), "backbone": dict(self.hparams.backbone),
                                "whitening": {k: v for k, v in self.hparams.whitening.items() if k != "dataset"}
                                | {"dataset": str(self.hparams.whitening.get("dataset", {}).get("name"))},
                                "state_dict": {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")},
                                "content": {k: v.state_dict() for k, v in self.net.content.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        entry = checkpoint.get(CKPT_KEY, {})
        self.net.content = {k: ContentSet.from_state(v) for k, v in entry.get("content", {}).items()}
