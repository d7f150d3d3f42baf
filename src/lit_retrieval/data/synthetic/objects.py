"""Object instances for cut-and-paste: the common types and the COCO-format source.

An object is a segmented instance cut out of a source image: the RGB crop of its box, the binary mask
crop, its category and the ids of the annotation and of the source image. Sources index their
instances up front (``refs``, cheap) and decode pixels and masks only when an instance is loaded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

MIN_OBJECT_SIZE = 80  # Chen et al.: instances whose box is under 80 x 80 px are left out


@dataclass(frozen=True)
class ObjectRef:
    """An indexed, not yet decoded, instance.

    Attributes:
        ann_id: annotation id (unique within the source).
        image_id: id of the source image.
        source: key of the source image (its path for files), the unit of every split.
        category: category name.
        bbox: ``[x1, y1, x2, y2]`` box of the instance in source-image pixels (floats, as annotated).
    """

    ann_id: int
    image_id: int
    source: str
    category: str
    bbox: tuple[float, float, float, float]

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """The integer box that contains ``bbox`` (PIL crop convention: x2, y2 exclusive)."""
        x1, y1, x2, y2 = self.bbox
        return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return (x2 - x1) * (y2 - y1)


@dataclass(frozen=True)
class ObjectInstance:
    """A decoded instance: ``rgb`` (h, w, 3) uint8 crop of its box and ``mask`` (h, w) bool."""

    ref: ObjectRef
    rgb: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"object {self.ref.ann_id}: rgb must be (h, w, 3) uint8, got {self.rgb.shape} "
                             f"{self.rgb.dtype}")
        if self.mask.shape != self.rgb.shape[:2]:
            raise ValueError(f"object {self.ref.ann_id}: mask {self.mask.shape} does not match rgb "
                             f"{self.rgb.shape[:2]}")
        if not self.mask.any():
            raise ValueError(f"object {self.ref.ann_id} from {self.ref.source}: empty mask")

    @property
    def source_path(self) -> str:
        return self.ref.source

    @property
    def category(self) -> str:
        return self.ref.category

    @property
    def ann_id(self) -> int:
        return self.ref.ann_id

    @property
    def image_id(self) -> int:
        return self.ref.image_id


class ObjectSource(Protocol):
    """What the compositor and the benchmark builder need from a source of instances."""

    @property
    def refs(self) -> Sequence[ObjectRef]: ...

    def load(self, ref: ObjectRef) -> ObjectInstance: ...

    def source_image(self, ref: ObjectRef) -> np.ndarray: ...

    def source_file(self, ref: ObjectRef) -> Path | None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ObjectSubset:
    """A view of a source restricted to some of its instances (e.g. one side of ``split_by_image``)."""

    base: ObjectSource
    refs: tuple[ObjectRef, ...]

    def load(self, ref: ObjectRef) -> ObjectInstance:
        return self.base.load(ref)

    def source_image(self, ref: ObjectRef) -> np.ndarray:
        return self.base.source_image(ref)

    def source_file(self, ref: ObjectRef) -> Path | None:
        return self.base.source_file(ref)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "subset": len(self.refs)}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to an (h, w) bool mask."""
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
            raise ValueError("polygon segmentation must be a non-empty list of [x1, y1, x2, y2, ...] lists of >= 3 "
                             "points")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} does not match the image size [{height}, {width}]")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError("segmentation must be a polygon list or an RLE dict with 'size' and 'counts'")
    return mask_utils.decode(rle).astype(bool)


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as (h, w, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}; replace or remove the file") from e


class CocoObjects:
    """Instances of a COCO-format dataset (``instances.json`` + image folder).

    Crowd annotations and instances whose box is under ``min_size`` px in width or height are left out.

    Args:
        root: dataset folder; by default annotations are read from ``root/annotations/instances.json`` and
            images from ``root/images``.
        ann_file: annotation file, overriding the default.
        image_dir: image folder, overriding the default.
        min_size: smallest kept box side, in source pixels.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        min_size: int = MIN_OBJECT_SIZE,
    ) -> None:
        self.root = Path(root)
        self.ann_file = Path(ann_file) if ann_file is not None else self.root / "annotations" / "instances.json"
        self.image_dir = Path(image_dir) if image_dir is not None else self.root / "images"
        self.min_size = min_size
        data = _read_coco_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"COCO image folder {self.image_dir} does not exist (annotations: {self.ann_file}); "
                "pass image_dir= to point at the folder holding the listed file_name entries"
            )
        self._images = _index_images(data, self.ann_file)
        categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
        self._anns: dict[int, dict[str, Any]] = {}
        refs: list[ObjectRef] = []
        for ann in data["annotations"]:
            missing = {"id", "image_id", "bbox", "segmentation"} - set(ann)
            if missing:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id', '?')} lacks {sorted(missing)}")
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w < min_size or h < min_size:
                continue
            if ann["image_id"] not in self._images:
                raise ValueError(f"{self.ann_file}: annotation {ann['id']} refers to unknown image_id "
                                 f"{ann['image_id']}")
            file_name = self._images[ann["image_id"]]["file_name"]
            category = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            refs.append(ObjectRef(int(ann["id"]), int(ann["image_id"]), str(self.image_dir / file_name), category,
                                  (x, y, x + w, y + h)))
            self._anns[int(ann["id"])] = ann
        self.refs: tuple[ObjectRef, ...] = tuple(refs)
        absent = sorted({r.source for r in refs if not Path(r.source).is_file()})
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) listed in {self.ann_file} are missing from {self.image_dir}, e.g. "
                f"{absent[:3]}; "
                "copy them there or remove their entries from the annotation file"
            )

    def __len__(self) -> int:
        return len(self.refs)

    def source_file(self, ref: ObjectRef) -> Path | None:
        return Path(ref.source)

    def source_image(self, ref: ObjectRef) -> np.ndarray:
        return load_rgb(Path(ref.source))

    def load(self, ref: ObjectRef) -> ObjectInstance:
        """Decode the instance: crop of its box from the source image and of its mask."""
        ann = self._anns[ref.ann_id]
        info = self._images[ref.image_id]
        image = self.source_image(ref)
        h, w = int(info["height"]), int(info["width"])
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"{ref.source} is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says {w}x{h}; "
                "the image file does not match its annotation"
            )
        try:
            mask = decode_segmentation(ann["segmentation"], h, w)
        except ValueError as e:
            raise ValueError(f"{self.ann_file}: annotation {ref.ann_id} ({ref.source}): {e}") from e
        x1, y1, x2, y2 = ref.crop_box
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        return ObjectInstance(ref, np.ascontiguousarray(image[y1:y2, x1:x2]), np.ascontiguousarray(mask[y1:y2, x1:x2]))

    def describe(self) -> dict[str, Any]:
        return {"kind": "coco", "ann_file": str(self.ann_file), "image_dir": str(self.image_dir),
                "min_size": self.min_size, "n_objects": len(self.refs)}


def _read_coco_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} does not exist; expected <root>/annotations/instances.json "
            "(or pass ann_file= to CocoObjects)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"COCO annotation file {path} is not valid JSON ({e}); re-export or re-download it") from e
    if (not isinstance(data, dict) or not isinstance(data.get("images"), list)
            or not isinstance(data.get("annotations"), list)):
        raise ValueError(
            f"COCO annotation file {path} must be a JSON object with 'images' and 'annotations' lists "
            "(the official instances_*.json layout)"
        )
    return data


def _index_images(data: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    images = {}
    for im in data["images"]:
        missing = {"id", "file_name", "height", "width"} - set(im)
        if missing:
            raise ValueError(f"{path}: image entry {im.get('id', '?')} lacks {sorted(missing)}")
        images[im["id"]] = im
    return images
