"""Cut-and-paste synthetic data: objects, backgrounds, the paste, patch shuffle and benchmark builders.

Typical use::

    from lit_retrieval.data.synthetic import BenchmarkSpec, embedded_root, build_from_shared
    root = embedded_root(cache_dir)            # procedural benchmark, built once
    build_from_shared(coco_dir, imagenet_dir, out_root, spec=BenchmarkSpec(n_queries=24, image_size=384))

CLI: ``python -m lit_retrieval.data.synthetic.build --help``.
"""
from .backgrounds import BackgroundSource, ImageFolderBackgrounds, list_images, resize_long_side
from .benchmark import DEFAULT_POSITIVES, FORMAT_VERSION, LABELS, BenchmarkSpec, build_benchmark, split_by_image
from .compositor import PRESETS, PasteParams, PasteTransform, compose, jitter_colors, paste, sample_transform
from .objects import CocoObjects, ObjectInstance, ObjectRef, ObjectSource, ObjectSubset, decode_segmentation
from .procedural import ProceduralBackgrounds, ProceduralObjects, procedural_background, render_object, smooth_noise
from .recipes import SHARED_SPEC, build_embedded, build_from_shared, embedded_root
from .shuffle import read_gnd, shuffle_dataset, shuffle_patches

__all__ = [
    "BackgroundSource", "ImageFolderBackgrounds", "list_images", "resize_long_side",
    "DEFAULT_POSITIVES", "FORMAT_VERSION", "LABELS", "BenchmarkSpec", "build_benchmark", "split_by_image",
    "PRESETS", "PasteParams", "PasteTransform", "compose", "jitter_colors", "paste", "sample_transform",
    "CocoObjects", "ObjectInstance", "ObjectRef", "ObjectSource", "ObjectSubset", "decode_segmentation",
    "ProceduralBackgrounds", "ProceduralObjects", "procedural_background", "render_object", "smooth_noise",
    "SHARED_SPEC", "build_embedded", "build_from_shared", "embedded_root",
    "read_gnd", "shuffle_dataset", "shuffle_patches",
]
