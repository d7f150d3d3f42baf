"""Pictures of the regional attention during training (Kim & Yoon, Figs. 1 and 3).

At the end of each retrieval-evaluated validation (every ``every_n_epochs``) and of fitting, on rank 0: the
top-``k`` attentive regions drawn on ``n_images`` database images of ``dataset`` (``attention_regions.png``)
and a histogram of the attention weights per R-MAC scale over those images (``attention_hist.png``), in
``<run>/plots/`` (the latest; each epoch's copy is kept as ``*_epoch<N>.png``) and logged as wandb images.
The ``final`` pictures show the weights the run reports: the selected checkpoint when ``train.py`` evaluates it
on the test benchmarks (a stand-alone validation after fitting), else the last weights.

On a cut-and-paste benchmark, which records the objects it pasted, the pictures are drawn on images with
objects (their boxes dashed in green), and each picture comes with the fraction of the top-``k`` regions that
lie on an object against chance (the fraction of all regions that do: what ``Φ ≡ 1`` gives), written next to it
(``attention_regions*.json``), under the grid, and logged as ``attention/top<k>_on_objects`` /
``attention/chance_on_objects``.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.trainer.states import TrainerFn

from ...atomic import atomic_json
from ...boxes import Boxes
from ...data import load_dataset, load_for_retrieval
from ...loggers import log_images, log_metrics
from .pictures import attention_on_objects, save_attention_histogram, save_attention_regions

log = logging.getLogger(__name__)


class AttentionVisualization(pl.Callback):
    def __init__(self, dataset: Mapping[str, Any], output_dir: str, n_images: int = 8, k: int = 5,
                 image_size: int = 512, every_n_epochs: int = 1, enabled: bool = True) -> None:
        super().__init__()
        self.dataset_cfg, self.output_dir = dict(dataset), Path(output_dir)
        self.n_images, self.k, self.image_size = int(n_images), int(k), int(image_size)
        self.every, self.enabled = max(1, int(every_n_epochs)), bool(enabled)
        self._picked: tuple[list[Path], list[np.ndarray]] | None = None
        self.summary: dict[str, Any] = {}  # the latest picture, its checkpoint and its regions-on-objects record

    def run_record(self) -> dict[str, Any]:
        """Its section of the training run's ``results.json``: the latest picture and its record."""
        return {"attention": self.summary} if self.summary else {}

    def summary_lines(self, out_dir: Path) -> list[str]:
        """Its line of the run's closing summary: where the picture is and how often attention hits objects."""
        att = self.summary
        if not att.get("picture"):
            return []
        rec = att.get("regions_on_objects")
        on = "" if not rec else (f": top-{rec['k']} regions on an object {100 * rec['top_k']:.0f}% "
                                 f"(chance / Φ ≡ 1: {100 * rec['chance']:.0f}%)")
        return [f"  {Path(att['picture']).relative_to(out_dir)}  attention of {att.get('checkpoint')}{on}"]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:  # after fitting: the checkpoint the run reports
            self.draw(trainer, pl_module, "final", checkpoint=trainer.ckpt_path)
        elif (trainer.current_epoch + 1) % self.every == 0:
            self.draw(trainer, pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module, "final", checkpoint="last weights")

    def _images(self) -> tuple[list[Path], list[np.ndarray]]:
        """The database images to draw on (those with known objects when the benchmark records them, spread
        over the database) and their object boxes in stored-image pixels."""
        if self._picked is None:
            data = load_dataset(self.dataset_cfg)
            pool = sorted(data.object_boxes) or list(range(data.n_db))
            pick = [pool[i] for i in np.linspace(0, len(pool) - 1, min(self.n_images, len(pool))).astype(int)]
            self._picked = ([Path(data.db_paths[i]) for i in pick],
                            [np.asarray(data.object_boxes.get(i, []), dtype=np.float64).reshape(-1, 4) for i in pick])
        return self._picked

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str,
             checkpoint: str | None = None) -> list[Path]:
        net = getattr(pl_module, "net", None)
        if not self.enabled or not trainer.is_global_zero or not hasattr(net, "attention_map"):
            return []  # off, another rank, or a model without regional attention (e.g. local similarity)
        paths, objects = self._images()
        images, boxes, weights, levels, scaled = [], [], [], [], []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                for path, obj in zip(paths, objects):
                    img = load_for_retrieval(path, self.image_size)
                    att = net.attention_map(net.backbone.normalize(img[None].to(pl_module.device)))
                    hw = tuple(img.shape[-2:])
                    images.append((img.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8))
                    cells = Boxes.of(np.asarray(att["boxes"], np.int64), "yxhw", "cells")
                    boxes.append(cells.to_pixels(hw, stride=net.backbone.stride).numpy())
                    weights.append(att["weights"][0].float().cpu().numpy())
                    levels.append(np.asarray(att["levels"]))
                    with Image.open(path) as im:  # object boxes: stored pixels -> the resized image's
                        sx, sy = hw[1] / im.size[0], hw[0] / im.size[1]
                    scaled.append(obj * np.array([sx, sy, sx, sy]))
        finally:
            pl_module.train(was_training)
        out = self.output_dir / "plots"
        record = attention_on_objects(boxes, weights, scaled, k=self.k) if any(len(o) for o in scaled) else None
        caption = "" if record is None else (
            f"top-{self.k} regions on an object (green): {100 * record['top_k']:.0f}% "
            f"(chance, i.e. Φ ≡ 1: {100 * record['chance']:.0f}%) over {record['images']} images")
        regions = save_attention_regions(images, boxes, weights, out / "attention_regions.png", k=self.k,
                                         titles=[p.name for p in paths], objects=scaled, caption=caption)
        hist = save_attention_histogram(np.concatenate(weights), np.concatenate(levels), out / "attention_hist.png",
                                        title=f"attention weights per R-MAC scale ({tag})")
        for p in (regions, hist):
            shutil.copyfile(p, p.with_name(f"{p.stem}_{tag}.png"))
        self.summary = {"tag": tag, "checkpoint": checkpoint,
                        "picture": str(regions.with_name(f"{regions.stem}_{tag}.png")),
                        "images": [p.name for p in paths], "regions_on_objects": record}
        atomic_json(self.summary, regions.with_name(f"{regions.stem}_{tag}.json"))
        log_images(trainer.loggers, "attention/regions", [regions], step=trainer.global_step)
        log_images(trainer.loggers, "attention/histogram", [hist], step=trainer.global_step)
        if record is not None:
            log_metrics(trainer.loggers, {f"attention/top{self.k}_on_objects": record["top_k"],
                                          "attention/chance_on_objects": record["chance"]}, step=trainer.global_step)
            log.info("attention (%s): %s", tag, caption)
        return [regions, hist]
