"""LightningModules: thin training wrappers around the ``lit_retrieval.models`` networks."""
from .landmark_detector import LandmarkDetectorModule
from .local_similarity import LocalSimilarityModule
from .regional_attention import RegionalAttentionModule

__all__ = ["LandmarkDetectorModule", "LocalSimilarityModule", "RegionalAttentionModule"]
