"""Local similarity retrieval (Chen et al.): product-quantized gallery grids, R-MAC shortlist and fusion, R-Match."""
from .pipeline import MODES, Described, Settings, check_config, describe, learn_quantizer, pq_plan, run_local, score
from .pq import GridQuantizer
from .search import Fusion, GalleryGrids, LocalScores, fused_ranks, local_scores, rmatch_scores, shortlist

__all__ = ["MODES", "Described", "Fusion", "GalleryGrids", "LocalScores", "GridQuantizer", "Settings", "check_config",
           "describe", "fused_ranks", "learn_quantizer", "local_scores", "pq_plan", "rmatch_scores", "run_local",
           "score", "shortlist"]
