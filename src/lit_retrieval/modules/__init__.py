"""LightningModules: thin training wrappers around the ``lit_retrieval.models`` networks."""
from .regional_attention import RegionalAttentionModule

__all__ = ["RegionalAttentionModule"]
