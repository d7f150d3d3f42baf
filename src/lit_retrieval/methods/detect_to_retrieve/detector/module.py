"""LightningModule for the landmark box detector of Detect-to-Retrieve (Teichmann et al., Sec. 5.1, Appendix B).

Training: torchvision's detection losses (RPN + box head for Faster R-CNN, box regression + classification for
SSDlite), summed, on class-agnostic landmark boxes (``data=synthetic_boxes``: cut-and-paste boxes, COCO-format
sets or the Google Landmark Boxes CSV). SGD with momentum, a linear warm-up then a cosine decay per step. With
``data.features=cached`` (``fasterrcnn_lite0``) the steps receive the stored maps of the frozen trunk and run only
the neck, RPN and RoI heads (:func:`~lit_retrieval.methods.detect_to_retrieve.detector.models.rcnn_from_trunk`).

Validation: AP at IoU 0.5 with pycocotools' COCOeval (the paper's metric), logged as ``val/AP50`` each
validation; ``<run>/plots/detector_ap.png`` (the learning curve, Fig. 7) and ``detections.png`` (predicted boxes
with scores ≥ 0.2 beside the ground truth, Figs. 8-9) are rewritten after each validation.

Retrieval: the module's ``backbone`` is the frozen local-feature extractor of D2R retrieval (``backbone=``); the
retrieval callback's rankers (:meth:`retrieval_rankers`) run ASMK* (no boxes), D2R-ASMK* (regional search) and
D2R-R-ASMK* (regional aggregation) with the detector being trained, beside the callback's global baselines.
Checkpoints hold the whole detector (``landmark_detector`` entry, read by ``eval.py method=d2r
ckpt_path=...``) but not the frozen retrieval backbone.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from ....backbones import build_backbone
from ....backbones.weights import weights_identity
from .models import CKPT_KEY, TrunkEncoder, build_detector, detector_config, rcnn_from_trunk
from ....loggers import log_images

log = logging.getLogger(__name__)
BACKBONE_PREFIX = "backbone."


class LandmarkDetectorModule(pl.LightningModule):
    """``detector``: ``{arch, backbone_weights, trainable_backbone_layers, kwargs}`` (:func:`build_detector`);
    ``backbone``: the retrieval backbone (``{name, weights}``) for the callback's D2R rankers; ``optimizer``:
    ``{lr, momentum, weight_decay, warmup_steps}``; ``retrieval``: the callback's ``method=d2r`` settings (the
    schema of ``conf/method/d2r.yaml``); ``plots``: ``{dir, n_images, min_score}``."""

    def __init__(self, detector: dict[str, Any], backbone: dict[str, Any], optimizer: dict[str, Any],
                 retrieval: dict[str, Any] | None = None, plots: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        d = dict(detector)
        kwargs = dict(d.get("kwargs") or {})
        self.detector_cfg = detector_config(d["arch"], d.get("trainable_backbone_layers"), **kwargs)
        self.net = build_detector(d["arch"], backbone_weights=str(d.get("backbone_weights", "imagenet")),
                                  trainable_backbone_layers=d.get("trainable_backbone_layers"), **kwargs)
        self.backbone = build_backbone(backbone["name"], weights=str(backbone.get("weights", "imagenet")))
        self.history: list[dict[str, Any]] = []
        self._val: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._shown: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    # -- training -------------------------------------------------------------------------------------
    def frozen_encoder(self) -> TrunkEncoder:
        """The detector's frozen trunk as the training feature store sees it (``data.features=cached``)."""
        d = self.hparams.detector
        return TrunkEncoder(self.net, {"arch": d["arch"],
                                       "weights": weights_identity(str(d.get("backbone_weights", "imagenet")), 0)})

    def _run(self, images: list[Any], targets: list[dict] | None = None) -> Any:
        """The detector on images, or after its trunk on stored trunk maps (``data.features=cached``)."""
        if images and isinstance(images[0], Mapping):
            sizes = [t["image_size"] for t in targets]
            if self.net.training:
                return rcnn_from_trunk(self.net, images, sizes, targets)
            return rcnn_from_trunk(self.net, images, sizes, original_sizes=[t["original_size"] for t in targets])
        return self.net(images, targets) if self.net.training else self.net(images)

    def training_step(self, batch: tuple[list[Any], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self._run(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            parts = {k: round(float(v), 4) for k, v in losses.items()}
            raise FloatingPointError(f"detector loss is {float(loss)} at step {self.global_step} ({parts}). Fix: "
                                     "lower model.optimizer.lr or raise model.optimizer.warmup_steps")
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=n)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.hparams.optimizer
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o.get("momentum", 0.9)),
                              weight_decay=float(o.get("weight_decay", 1e-4)))
        warmup = int(o.get("warmup_steps", 100))
        total = max(int(self.trainer.estimated_stepping_batches), warmup + 1)

        def factor(step: int) -> float:  # linear warm-up from 1 %, then cosine to 0
            if step < warmup:
                return 0.01 + 0.99 * step / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- validation: AP@0.5 (COCOeval), learning curve, detection pictures ------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val, self._shown = [], []
        n_show = int((self.hparams.plots or {}).get("n_images", 8))
        batch = int(getattr(self.trainer.datamodule, "hparams", {}).get("batch_size", 1))
        n_val = sum(int(n) for n in self.trainer.num_val_batches if math.isfinite(n)) * batch
        self._show_every = max(1, n_val // max(1, n_show))  # pictures spread over the validation set

    def validation_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        images, targets = batch
        out = self._run(images, targets)  # eval mode: detections in pixels of the images
        n_show = int((self.hparams.plots or {}).get("n_images", 8))
        for img, o, t in zip(images, out, targets):
            boxes, scores = o["boxes"].detach().cpu().numpy(), o["scores"].detach().cpu().numpy()
            gt = t["boxes"].detach().cpu().numpy()
            if len(self._shown) < n_show and len(self._val) % getattr(self, "_show_every", 1) == 0:
                if isinstance(img, Mapping):  # stored maps: the pixels come from the validation set
                    pic = self.trainer.datamodule.val_image(int(t["image_id"]))
                else:
                    pic = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
                self._shown.append((pic, boxes, scores, gt))
            self._val.append((gt, boxes, scores))

    def on_validation_epoch_end(self) -> None:
        from .ap import coco_ap

        if not self._val:
            return
        ap = coco_ap([g for g, _, _ in self._val], [(b, s) for _, b, s in self._val])
        self.log_dict({"val/AP50": float(ap["AP50"]), "val/AP": float(ap["AP"]), "val/AR100": float(ap["AR100"])},
                      sync_dist=True)
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return  # the learning curve is the training's: a later validation of a checkpoint leaves it as it is
        self.history.append({"epoch": self.current_epoch, "step": self.global_step, "AP50": float(ap["AP50"]),
                             "AP": float(ap["AP"])})
        if self.trainer.is_global_zero:
            self._draw()

    def _draw(self) -> None:
        from .viz import save_detections, save_learning_curve

        p = dict(self.hparams.plots or {})
        if not p.get("dir"):
            return
        out = Path(p["dir"]) / "plots"
        out.mkdir(parents=True, exist_ok=True)
        curve, dets = out / "detector_ap.png", out / "detections.png"
        save_learning_curve(self.history, curve)
        save_detections([s[0] for s in self._shown], [(s[1], s[2]) for s in self._shown],
                        [s[3] for s in self._shown], dets, min_score=float(p.get("min_score", 0.2)))
        log_images(self.loggers, "detector/plots", [curve, dets], step=self.global_step)

    # -- retrieval callback ---------------------------------------------------------------------------
    def retrieval_rankers(self) -> dict[str, Any]:
        """``method=d2r``'s retriever on the detector being trained (``retrieval``: its method settings)."""
        if not hasattr(self, "_ranker"):
            from ..pipeline import D2RRetriever, settings_from_method

            key = {"backbone": self.backbone.name,
                   "weights": weights_identity(str(self.hparams.backbone.get("weights", "imagenet")), 0)}
            self._ranker = D2RRetriever.for_network(self.net, self.backbone,
                                                    settings_from_method(self.hparams.retrieval or {}), key)
        return {"d2r": self._ranker}

    # -- checkpoints: the detector (for eval.py), without the frozen retrieval backbone --------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith(BACKBONE_PREFIX)]:
            del sd[k]
        checkpoint[CKPT_KEY] = {"config": self.detector_cfg, "backbone": dict(self.hparams.backbone),
                                "state_dict": {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}}
        checkpoint["detector_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("detector_history", []))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001
        full = {f"{BACKBONE_PREFIX}{k}": v for k, v in self.backbone.state_dict().items()}
        full.update(state_dict)  # the frozen retrieval backbone is not stored: take it from the module as built
        return super().load_state_dict(full, strict=strict, assign=assign)
