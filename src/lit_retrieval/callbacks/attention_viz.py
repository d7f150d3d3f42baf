"""Pictures of the regional attention during training (Kim & Yoon, Figs. 1 and 3).

At the end of each retrieval-evaluated validation (every ``every_n_epochs``) and of fitting, on rank 0: the
top-``k`` attentive regions drawn on ``n_images`` database images of ``dataset`` (``attention_regions.png``)
and a histogram of the attention weights per R-MAC scale over those images (``attention_hist.png``), in
``<run>/plots/`` (the latest; each epoch's copy is kept as ``*_epoch<N>.png``) and logged as wandb images.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch

from ..data import load_dataset, load_for_retrieval
from ..loggers import log_images
from ..viz_attention import boxes_feature_to_pixels, save_attention_histogram, save_attention_regions

log = logging.getLogger(__name__)


class AttentionVisualization(pl.Callback):
    def __init__(self, dataset: Mapping[str, Any], output_dir: str, n_images: int = 8, k: int = 5,
                 image_size: int = 512, every_n_epochs: int = 1, enabled: bool = True) -> None:
        super().__init__()
        self.dataset_cfg, self.output_dir = dict(dataset), Path(output_dir)
        self.n_images, self.k, self.image_size = int(n_images), int(k), int(image_size)
        self.every, self.enabled = max(1, int(every_n_epochs)), bool(enabled)
        self._paths: list[Path] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every == 0:
            self.draw(trainer, pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "final")

    def _images(self) -> list[Path]:
        if self._paths is None:
            data = load_dataset(self.dataset_cfg)
            pick = np.linspace(0, data.n_db - 1, min(self.n_images, data.n_db)).astype(int)
            self._paths = [Path(data.db_paths[i]) for i in pick]
        return self._paths

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> list[Path]:
        net = getattr(pl_module, "net", None)
        if not self.enabled or not trainer.is_global_zero or not hasattr(net, "attention_map"):
            return []  # off, another rank, or a model without regional attention (e.g. local similarity)
        images, boxes, weights, levels = [], [], [], []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                for path in self._images():
                    img = load_for_retrieval(path, self.image_size)
                    att = net.attention_map(net.backbone.normalize(img[None].to(pl_module.device)))
                    hw = tuple(img.shape[-2:])
                    images.append((img.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8))
                    boxes.append(boxes_feature_to_pixels(np.asarray(att["boxes"]), net.backbone.stride, hw))
                    weights.append(att["weights"][0].float().cpu().numpy())
                    levels.append(np.asarray(att["levels"]))
        finally:
            pl_module.train(was_training)
        out = self.output_dir / "plots"
        regions = save_attention_regions(images, boxes, weights, out / "attention_regions.png", k=self.k,
                                         titles=[p.name for p in self._images()])
        hist = save_attention_histogram(np.concatenate(weights), np.concatenate(levels), out / "attention_hist.png",
                                        title=f"attention weights per R-MAC scale ({tag})")
        for p in (regions, hist):
            shutil.copyfile(p, p.with_name(f"{p.stem}_{tag}.png"))
        log_images(trainer.loggers, "attention/regions", [regions], step=trainer.global_step)
        log_images(trainer.loggers, "attention/histogram", [hist], step=trainer.global_step)
        return [regions, hist]
