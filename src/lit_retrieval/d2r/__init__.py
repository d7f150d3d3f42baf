"""Detect-to-Retrieve (Teichmann et al., CVPR 2019): aggregated match kernels (VLAD, ASMK, ASMK*), regional search
(eqs. 3-4), regional aggregation (R-VLAD, Naive-R-ASMK, R-ASMK, R-ASMK*) and an inverted file for search."""
from .ivf import InvertedFile
from .kernels import (Aggregated, asmk, asmk_star, assign, binary_similarity, bytes_per_image, gamma, hamming,
                      naive_r_asmk, r_asmk, r_asmk_star, r_vlad, regional_similarities, residual_sums, selectivity,
                      self_similarity, sim_avg, sim_max, similarity, vlad, word_similarities)

__all__ = ["Aggregated", "InvertedFile", "asmk", "asmk_star", "assign", "binary_similarity", "bytes_per_image",
           "gamma", "hamming", "naive_r_asmk", "r_asmk", "r_asmk_star", "r_vlad", "regional_similarities",
           "residual_sums", "selectivity", "self_similarity", "sim_avg", "sim_max", "similarity", "vlad",
           "word_similarities"]
