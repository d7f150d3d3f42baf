"""Learned region-scoring models (``nn.Module`` cores; their LightningModules are in ``lit_retrieval.modules``)."""
from .attention import RegionalAttention, attention_input
from .regional_attention import RegionalAttentionNet, UniformRegions, load_regional_attention

__all__ = ["RegionalAttention", "RegionalAttentionNet", "UniformRegions", "attention_input", "load_regional_attention"]
