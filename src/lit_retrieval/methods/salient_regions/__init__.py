"""Salient-region 2nd-order aggregation and region-to-region matching (Jeong, Choo, Seo & Cho, ICIP):
``eval.py method=salient_regions``. Weights (eqs. 1-2): ``weights``; salient points: ``keypoints``; candidate
regions: ``regions``; region descriptors (eqs. 3-6, 9): ``descriptors``; matching and QE (eqs. 7-8): ``matching``;
the whole method over a dataset: ``pipeline``; Fig. 2 pictures: ``viz``."""
from .matching import RegionSet, rank, region_similarity, regional_query_expansion
from .pipeline import Described, SalientRegions, Settings, describe_dataset, run_salient

__all__ = ["Described", "RegionSet", "SalientRegions", "Settings", "describe_dataset", "rank", "region_similarity",
           "regional_query_expansion", "run_salient"]
