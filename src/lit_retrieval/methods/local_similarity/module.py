"""LightningModule for Chen et al.'s local similarity: the localization subnet trained on cut-and-paste pairs.

A batch of ``N`` query/gallery pairs (``data=synthetic_pairs``) gives ``N`` positives and ``N(N−1)`` negatives
(every query against every other gallery); all positives and the ``n_hard`` (default ``N``) negatives the subnet
finds most "present" are kept (Sec. 4.1), and the loss is eq. 8 (``λ = 0.05``; ``λ = 0`` is Table 1's
classification-only ablation). SGD lr 1e-3, momentum 0.9, weight decay 1e-2 on the subnet (and on the backbone's
last ``finetune_layers`` convolutions, 0 by default). With ``quantize.M`` the gallery grids pass through a
product quantizer learned on the training galleries when fitting starts (Table 5's fine-tuning on quantized
features; start from a trained subnet with ``init_from``). Checkpoints leave out the frozen backbone.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ...backbones import Backbone, build_backbone
from ...backbones.weights import weights_identity
from ...data.features import FrozenEncoder, is_map
from .pipeline import LocalSimilarityRetriever, Settings
from .pq import GridQuantizer
from .network import (CKPT_KEY, LocalSimilarityNet, decode_boxes, encode_boxes,
                                       hard_pair_batch, load_local_similarity, local_similarity_loss)
from ...frozen import FrozenBackboneCheckpoint

log = logging.getLogger(__name__)


class LocalSimilarityModule(FrozenBackboneCheckpoint, pl.LightningModule):
    """``gallery_grid``/``query_grid``/``finetune_layers``: :class:`LocalSimilarityNet` settings; ``lam``: λ of
    eq. 8; ``n_hard``: negatives kept per batch (``None``: as many as pairs); ``optimizer``: SGD settings;
    ``quantize``: ``{M: null|int, nbits, batches}``; ``retrieval``: ``{w, K, batch}`` of the callback's fusion;
    ``init_from``: a ``model=local_similarity`` checkpoint whose subnet (and fine-tuned layers) to start from."""

    def __init__(self, backbone: dict[str, Any], optimizer: dict[str, Any], lam: float = 0.05,
                 n_hard: int | None = None, gallery_grid: int = 15, query_grid: int = 7, finetune_layers: int = 0,
                 quantize: dict[str, Any] | None = None, retrieval: dict[str, Any] | None = None,
                 init_from: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lam < 0:
            raise ValueError(f"model.lam={lam}: the weight of the localization loss must be >= 0 (0: classification "
                             "only, Table 1)")
        bb = build_backbone(backbone["name"], weights=str(backbone.get("weights", "imagenet")))
        if init_from:
            self.net = load_local_similarity(init_from, bb)
            if (self.net.gallery_grid, self.net.query_grid) != (gallery_grid, query_grid):
                raise ValueError(f"model.init_from={init_from} has grids {self.net.gallery_grid}/"
                                 f"{self.net.query_grid}, not model.gallery_grid={gallery_grid}/"
                                 f"query_grid={query_grid}: use the checkpoint's grid sizes")
        else:
            self.net = LocalSimilarityNet(bb, gallery_grid, query_grid, finetune_layers)
        self.quantizer: GridQuantizer | None = None
        r = retrieval or {}
        self.settings = Settings(w=float(r.get("w", 0.9)), K=int(r.get("K", 5000)), batch=int(r.get("batch", 64)))

    @property
    def backbone(self) -> Backbone:
        return self.net.backbone

    # -- training -------------------------------------------------------------------------------------
    def frozen_encoder(self) -> FrozenEncoder:
        """The frozen backbone as the training feature store sees it (``data.features=cached``)."""
        if self.net.finetune_layers:
            raise ValueError(f"data.features=cached caches a frozen backbone, but model.finetune_layers="
                             f"{self.net.finetune_layers} trains its last layers. Fix: data.features=online, or "
                             "model.finetune_layers=0")
        return super().frozen_encoder()

    def maps(self, x: Tensor) -> Tensor:
        """The backbone's maps of ``[0, 1]`` images (without gradient unless layers are fine-tuned), or cached maps
        (``data.features=cached``) as they are."""
        if is_map(x, self.backbone.out_channels):
            return x.float()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.net.finetune_layers > 0):
            return self.backbone(self.backbone.normalize(x))

    def grids(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Query and gallery grids of a batch (images or cached maps)."""
        fq = self.net.grid(self.maps(batch["query"]), "query")
        fg = self.net.grid(self.maps(batch["gallery"]), "db")
        if self.quantizer is not None:
            fg = self.quantizer.roundtrip(fg)
        return fq, fg

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        fq, fg = self.grids(batch)
        with torch.no_grad():  # every pair scored to find the hard negatives; only the kept pairs are trained
            logits_all, codes_all = self.net.score_all(fq, fg)  # N×N pairs: query i, gallery j
        margin = logits_all[..., 1] - logits_all[..., 0]
        objects = batch["object"]
        qi, gi, labels = hard_pair_batch(margin, self.hparams.n_hard, objects)
        logits, codes = self.net(fq[qi], fg[gi])  # the kept pairs again, with gradient (same values)
        if "gallery_hw" in batch:  # cached maps: the gallery's size in pixels comes with them
            hw = batch["gallery_hw"][gi].to(fg.device)
        else:
            hw = torch.tensor(batch["gallery"].shape[-2:], device=fg.device).expand(len(gi), 2)
        targets = encode_boxes(batch["box"][gi].float(), hw)
        loss, cls, loc = local_similarity_loss(logits, codes, labels, targets, float(self.hparams.lam))
        same = objects[:, None] == objects[None, :]
        acc = ((margin > 0) == same).float().mean()
        n = len(objects)
        self.log_dict({f"{stage}/loss": loss, f"{stage}/cls": cls, f"{stage}/loc": loc, f"{stage}/pair_acc": acc},
                      prog_bar=stage == "val", sync_dist=stage == "val", batch_size=n)
        if stage == "val":
            eye = torch.arange(n, device=fg.device)
            pred = decode_boxes(codes_all[eye, eye].detach(), hw[:n])
            iou = box_iou(pred, batch["box"].float()).diagonal().mean()
            self.log("val/box_iou", iou, sync_dist=True, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.hparams.optimizer
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o["momentum"]),
                               weight_decay=float(o["weight_decay"]))

    # -- quantized fine-tuning ------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        q = self.hparams.quantize or {}
        if q.get("M") is None or self.quantizer is not None:
            return  # raw grids, or restored from the checkpoint being resumed
        loader = self.trainer.datamodule.train_dataloader()
        vecs = []
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i >= int(q.get("batches", 16)):
                    break
                fg = self.net.grid(self.maps(batch["gallery"].to(self.device)), "db")
                vecs.append(fg.permute(0, 2, 3, 1).reshape(-1, fg.shape[1]).cpu().numpy())
        self.quantizer = GridQuantizer.learn(np.concatenate(vecs), int(q["M"]), int(q.get("nbits", 8)))
        log.info("training on product-quantized gallery grids: M = %d, %d bytes per location (learned on %d "
                 "training locations)", self.quantizer.M, self.quantizer.bytes_per_vector(), sum(map(len, vecs)))

    # -- retrieval (used by the RetrievalEvaluation callback) ------------------------------------------
    def retrieval_rankers(self) -> dict[str, LocalSimilarityRetriever]:
        """``method=local_similarity``'s retriever on the subnet being trained (``retrieval``: its method settings)."""
        if not hasattr(self, "_ranker"):
            key = {"backbone": self.backbone.name,
                   "weights": weights_identity(str(self.hparams.backbone.get("weights", "imagenet")), 0)}
            self._ranker = LocalSimilarityRetriever.for_network(self.net, self.settings, key)
        self._ranker.quantizer = self.quantizer  # learned when fitting starts, or restored from a checkpoint
        return {"local_similarity": self._ranker}

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = self.drop_frozen_backbone(checkpoint["state_dict"], "net.backbone.")
        checkpoint[CKPT_KEY] = {"config": self.net.config(), "backbone": dict(self.hparams.backbone),
                                "state_dict": {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")},
                                "quantizer": None if self.quantizer is None else self.quantizer.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CKPT_KEY, {}).get("quantizer")
        self.quantizer = None if state is None else GridQuantizer.from_state(state)
