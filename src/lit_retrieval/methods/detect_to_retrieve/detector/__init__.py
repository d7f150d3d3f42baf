"""The landmark box detector of Detect-to-Retrieve (Teichmann et al., CVPR 2019): the torchvision detector and
its LightningModule, box data, COCO AP, pictures.

Names are imported lazily from their modules on first use (PEP 562), so
``import lit_retrieval.methods.detect_to_retrieve.detector`` (or one of its submodules) does not pull in
pycocotools, matplotlib or the data modules it does not need::

    from lit_retrieval.methods.detect_to_retrieve.detector import BoxesDataModule, coco_ap, save_detections
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("coco_ap", "coco_ground_truth", "detection_results"), "ap"),
    **dict.fromkeys(("LANDMARK_LABEL", "BoxesDataModule", "BoxSource", "BoxSubset", "CocoBoxes", "DetectionDataset",
                     "LandmarkBoxesCSV", "SyntheticBoxes", "box_paste_params", "collate_detection",
                     "make_box_source", "parse_box_field"), "data"),
    **dict.fromkeys(("save_detections", "save_learning_curve"), "viz"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
