"""LightningModule for Kim & Yoon's regional attention: classification training through the frozen head.

Only the attention parameters train (SGD, lr 1e-3, momentum 0.9, weight decay 5e-5; the learning rate drops
10× when the validation classification error has not improved for ``scheduler.patience`` validations).

``loss``: ``classification`` is the paper's objective (eq. 4: ImageNet labels through the frozen classifier, on
``data=imagenet|imagenet_samples|embedded``); ``retrieval`` is this framework's extension beyond the paper: the
same network and descriptor (eq. 3, test scale) trained on synthetic query/gallery pairs (``data=synthetic_pairs``)
with :func:`~lit_retrieval.losses.pair_contrastive` (the other pairs of the batch and, with ``data.shuffled``,
patch-shuffled copies of the galleries as negatives), the backbone still frozen. Both run on images or, with
``data.features=cached``, on the frozen maps of a fixed pool (:mod:`lit_retrieval.data.features`). The
within-image contrast of ``Φ`` (coefficient of variation per image, :func:`weight_contrast`) is logged as
``train/phi_cv`` and ``val/phi_cv``.
The regional PCA-whitening ``P`` depends on the frozen backbone and the regions only, not on the trained weights, so
it is learned once when fitting starts (before
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

from ...backbones import Backbone, build_backbone
from ...data import load_dataset
from ...data.features import is_map
from ...data.provenance import ContentSet, content_of_files
from ...losses import pair_contrastive
from .network import RegionalAttentionNet, UniformRegions
from .attention import weight_contrast
from .network import CKPT_KEY
from ...retrieval.regional import collect_regional_vectors, learn_regional_whitening
from ...whitening import Whitening
from ...frozen import FrozenBackboneCheckpoint

log = logging.getLogger(__name__)
LOSSES = ("classification", "retrieval")
RETRIEVAL_DEFAULTS: dict[str, Any] = {"temperature": 0.05}
OPTIMIZERS = ("sgd", "adam")


class RegionalAttentionModule(FrozenBackboneCheckpoint, pl.LightningModule):
    """``scales``/``train_scales``/``grid``/``context``/``hidden``/``aggregate``: :class:`RegionalAttentionNet`
    settings (``scales`` is the test scale S); ``whitening``: ``{kind: pca|none, dims, dataset: <dataset
    config>, max_images, image_size}``; ``optimizer``/``scheduler``: optimiser (``name: sgd|adam``) and plateau
    settings; ``loss``: ``classification|retrieval``; ``retrieval``: ``{temperature}`` of the retrieval loss."""

    _val_sums: Tensor

    def __init__(self, backbone: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any],
                 whitening: dict[str, Any], scales: int = 5, train_scales: int = 4, grid: str = "rmac",
                 context: bool = True, hidden: int = 64, aggregate: str = "mean",
                 hidden_activation: str = "tanh", loss: str = "classification",
                 retrieval: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"model.loss={loss!r}: choose 'classification' (the paper, eq. 4: ImageNet labels, "
                             "data=imagenet|imagenet_samples|embedded) or 'retrieval' (query/gallery pairs, "
                             "data=synthetic_pairs)")
        unknown = set(retrieval or {}) - set(RETRIEVAL_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown model.retrieval keys {sorted(unknown)}; known: {sorted(RETRIEVAL_DEFAULTS)}")
        self.retrieval_opts = {**RETRIEVAL_DEFAULTS, **dict(retrieval or {})}
        if str(optimizer.get("name", "sgd")) not in OPTIMIZERS:
            raise ValueError(f"model.optimizer.name={optimizer.get('name')!r}: choose one of {OPTIMIZERS}")
        bb = build_backbone(backbone["name"], weights=str(backbone.get("weights", "imagenet")))
        self.net = RegionalAttentionNet(bb, scales=scales, train_scales=train_scales, grid=grid, context=context,
                                        hidden=hidden, aggregate=aggregate, hidden_activation=hidden_activation,
                                        pca_input=str(whitening.get("input", "l2")))

    @property
    def backbone(self) -> Backbone:
        return self.net.backbone

    # -- training -------------------------------------------------------------------------------------
    def _input(self, x: Tensor) -> Tensor:
        """Images are normalised for the backbone; cached maps go as they are."""
        return x if is_map(x, self.backbone.out_channels) else self.backbone.normalize(x)

    def forward(self, images: Tensor) -> Tensor:
        """``[0, 1]`` images (or cached maps) -> ImageNet logits (eq. 4)."""
        return self.net.classify(self._input(images))

    def _classification(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        images, labels = batch
        logits, w = self.net.classify(self._input(images), return_weights=True)
        wrong = logits.argmax(dim=1) != labels
        return F.cross_entropy(logits, labels), wrong, w, {"error": wrong.float().mean()}

    def _retrieval(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        S = self.net.scales  # the test descriptor (eq. 3) is what this objective trains
        pq, wq = self.net.attend(self._input(batch["query"]), S)
        pg, wg = self.net.attend(self._input(batch["gallery"]), S)
        negatives = None
        if "shuffled" in batch:
            negatives = self.net.descriptor(*self.net.attend(self._input(batch["shuffled"]), S))
        loss, hits = pair_contrastive(self.net.descriptor(pq, wq), self.net.descriptor(pg, wg), batch["object"],
                                      negatives, float(self.retrieval_opts["temperature"]))
        return loss, ~hits, wg, {"recall1": hits.float().mean()}

    def _step(self, batch: Any, stage: str) -> Tensor:
        retrieval = isinstance(batch, dict)
        if retrieval != (self.hparams.loss == "retrieval"):
            got = "query/gallery pairs" if retrieval else "labelled images"
            raise ValueError(f"model.loss={self.hparams.loss} got {got}: use data=synthetic_pairs with "
                             "model.loss=retrieval, an ImageNet-labelled data source "
                             "(data=imagenet|imagenet_samples|embedded) with model.loss=classification")
        loss, wrong, w, extra = (self._retrieval if retrieval else self._classification)(batch)
        n = len(wrong)
        cv = weight_contrast(w.detach())
        if stage == "val":
            plateau = wrong.sum() if not retrieval else loss.detach() * n
            self._val_sums += torch.stack([plateau.float(), torch.tensor(float(n), device=loss.device)]).cpu()
        on_val = stage == "val"
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=on_val, batch_size=n)
        for name, value in extra.items():
            self.log(f"{stage}/{name}", value, prog_bar=on_val, sync_dist=on_val, batch_size=n)
        self.log(f"{stage}/phi_cv", cv.mean(), sync_dist=on_val, batch_size=n)
        if stage == "train":
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2)  # the plateau quantity (errors or loss) summed, items

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Step the plateau schedule on this validation's classification error (``loss=retrieval``: mean loss), all
        ranks' sums.

        Stepped here rather than by Lightning at the epoch's end so that the checkpoints written at the end of
        this validation already hold the stepped schedule: a resumed run then follows the same schedule
        (Lightning skips plateau steps when it restarts from such a checkpoint)."""
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        sums = self.trainer.strategy.reduce(self._val_sums.to(self.device), reduce_op="sum")
        self.lr_schedulers().step(float(sums[0] / sums[1].clamp_min(1)))

    def configure_optimizers(self) -> dict[str, Any]:
        o, s = self.hparams.optimizer, self.hparams.scheduler
        params = self.net.attention.parameters()
        if str(o.get("name", "sgd")) == "adam":
            opt = torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        else:
            opt = torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o["momentum"]),
                                  weight_decay=float(o["weight_decay"]))
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(s["factor"]),
                                                           patience=int(s["patience"]), min_lr=float(s["min_lr"]))
        monitor = "val/error" if self.hparams.loss == "classification" else "val/loss"
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": "epoch",
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
