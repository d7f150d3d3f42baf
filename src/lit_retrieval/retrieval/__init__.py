"""The retrieval engine: descriptor extraction (cached, multi-scale), faiss search, query expansion."""
from .cache import DescriptorCache, key_digest
from .extract import ImageItem, Loading, dataset_items, describe_multiscale, extract, image_loader
from .methods import METHODS, GlobalPooling, build_method, register_method
from .qe import expand_queries
from .search import search

__all__ = ["DescriptorCache", "GlobalPooling", "ImageItem", "Loading", "METHODS", "build_method", "dataset_items",
           "describe_multiscale", "expand_queries", "extract", "image_loader", "key_digest", "register_method",
           "search"]
