"""Average precision of landmark boxes with the COCO evaluation (Teichmann et al. report AP at IoU 0.5).

``coco_ap`` builds an in-memory pycocotools ground truth (one category, 1 = "landmark") from per-image box
arrays and scores detections with ``COCOeval(..., "bbox")``: greedy matching by descending score at each
IoU threshold, precision envelope sampled at 101 recall points (0, 0.01, ..., 1), at most 100 detections
per image. Boxes are ``[x1, y1, x2, y2]`` pixels (``x2``/``y2`` exclusive, so the width is ``x2 - x1``).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

LANDMARK_CATEGORY = 1
ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]


def _boxes(boxes: ArrayLike | None, what: str) -> np.ndarray:
    """``(n, 4)`` float64 xyxy boxes (``None`` or empty: none)."""
    if boxes is None:
        return np.zeros((0, 4))
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} must be (n, 4) [x1, y1, x2, y2] boxes, got shape {b.shape}")
    if not np.isfinite(b).all() or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"{what} must be finite [x1, y1, x2, y2] boxes with x1 <= x2 and y1 <= y2")
    return b


def _xywh(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def coco_ground_truth(gt: Sequence[ArrayLike | None]) -> Any:
    """A pycocotools ``COCO`` of image ids ``0..len(gt)-1``, one category ``landmark``, the boxes of ``gt[i]``
    on image ``i`` (annotation ids from 1: COCOeval reads id 0 as "unmatched")."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    for i, boxes in enumerate(gt):
        b = _boxes(boxes, f"ground truth of image {i}")
        images.append({"id": i})
        for x, y, w, h in _xywh(b).tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": LANDMARK_CATEGORY,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"info": {}, "images": images, "annotations": annotations,
                    "categories": [{"id": LANDMARK_CATEGORY, "name": "landmark"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detection_results(dets: Sequence[tuple[ArrayLike, ArrayLike] | None]) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of per-image ``(boxes, scores)``."""
    results = []
    for i, det in enumerate(dets):
        if det is None:
            continue
        boxes, scores = det
        b = _boxes(boxes, f"detections of image {i}")
        s = (scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)).reshape(-1)
        if len(s) != len(b):
            raise ValueError(f"image {i}: {len(b)} detection boxes but {len(s)} scores")
        results += [{"image_id": i, "category_id": LANDMARK_CATEGORY, "bbox": box, "score": float(score)}
                    for box, score in zip(_xywh(b).tolist(), s.tolist())]
    return results


def coco_ap(gt: Sequence[ArrayLike | None], dets: Sequence[tuple[ArrayLike, ArrayLike] | None],
            iou: float = 0.5) -> dict[str, float | int]:
    """COCO box AP of class-agnostic detections.

    Args:
        gt: per image, its ground-truth boxes ``(n, 4)`` xyxy (empty or ``None``: a negative image).
        dets: per image (same order and length), ``(boxes (m, 4) xyxy, scores (m,))`` (``None``: none).
        iou: the IoU threshold of the returned ``AP50`` (default 0.5; any multiple of 0.05 in [0.5, 0.95],
            the thresholds COCOeval computes).

    Returns:
        ``{"AP50": AP at iou, "AP": AP averaged over IoU 0.5:0.95, "AR100": recall with 100 detections per
        image averaged over IoU 0.5:0.95, "n_images", "n_gt", "n_dets"}``; the APs are 0.0 without detections.

    Raises:
        ValueError: no ground-truth box at all (AP is undefined), ``gt`` and ``dets`` of different lengths,
            malformed boxes, or an ``iou`` COCOeval does not compute.
    """
    from pycocotools.cocoeval import COCOeval

    if len(gt) != len(dets):
        raise ValueError(f"{len(gt)} ground-truth images but {len(dets)} detection images")
    coco_gt = coco_ground_truth(gt)
    n_gt, results = len(coco_gt.dataset["annotations"]), detection_results(dets)
    if n_gt == 0:
        raise ValueError(f"no ground-truth box in {len(gt)} images: average precision is undefined")
    summary: dict[str, float | int] = {"AP50": 0.0, "AP": 0.0, "AR100": 0.0, "n_images": len(gt), "n_gt": n_gt,
                                       "n_dets": len(results)}
    if not results:  # loadRes fails on an empty list; no detection finds nothing
        return summary
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        thresholds = evaluator.params.iouThrs
        t = np.flatnonzero(np.isclose(thresholds, iou))
        if not len(t):
            raise ValueError(f"iou must be one of COCOeval's thresholds {np.round(thresholds, 2).tolist()}, got {iou}")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap_at = _ap_at(evaluator, int(t[0]))
    summary.update(AP50=ap_at, AP=max(float(evaluator.stats[0]), 0.0), AR100=max(float(evaluator.stats[8]), 0.0))
    return summary


def _ap_at(evaluator: Any, t: int) -> float:
    """AP at IoU threshold index ``t``, all areas, 100 detections per image (``stats[1]`` when ``t`` is 0.5)."""
    area = evaluator.params.areaRngLbl.index("all")
    dets = evaluator.params.maxDets.index(100)
    precision = evaluator.eval["precision"][t, :, :, area, dets]  # recall points x categories
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


__all__ = ["LANDMARK_CATEGORY", "coco_ap", "coco_ground_truth", "detection_results"]
