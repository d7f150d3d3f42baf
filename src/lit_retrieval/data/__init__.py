"""Datasets: image IO, the revisited and classic formats, the cut-and-paste compositor, loading by config."""
from .classic import load_classic
from .dataset import RetrievalDataset
from .errors import BoxError, DataError, GroundTruthError, ImageLoadError
from .images import crop_query, load_for_retrieval, load_image, resize_max, safe_load, to_tensor
from .registry import load_dataset, whitening_pairs
from .revisited import load_revisited, write_revisited

__all__ = ["BoxError", "DataError", "GroundTruthError", "ImageLoadError", "RetrievalDataset", "crop_query",
           "load_classic", "load_dataset", "load_for_retrieval", "load_image", "load_revisited", "resize_max",
           "safe_load", "to_tensor", "whitening_pairs", "write_revisited"]
