"""Regional attention (Kim & Yoon, "Regional Attention Based Deep Feature for Image Retrieval", BMVC 2018): the
network, its LightningModule, its retrieval descriptor and its pictures (see README.md here)."""
from .attention import RegionalAttention, attention_input
from .network import RegionalAttentionNet, UniformRegions, load_regional_attention

__all__ = ["RegionalAttention", "RegionalAttentionNet", "UniformRegions", "attention_input", "load_regional_attention"]
