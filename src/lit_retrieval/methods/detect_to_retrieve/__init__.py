"""Detect-to-Retrieve (Teichmann et al., CVPR 2019): local features and regions (whole image + re-extracted box
crops), the PCA + k-means codebook, aggregated match kernels (VLAD, ASMK, ASMK*), regional search (eqs. 3-4),
regional aggregation (R-VLAD, Naive-R-ASMK, R-ASMK, R-ASMK*), an inverted file, and the searchable database of every
evaluated variant."""
from .boxes import regions_per_image, rmac_boxes, select_boxes
from .codebook import Codebook, l2_rows, learn_codebook, learn_pca
from .database import (AGGREGATIONS, KERNELS, REGIONAL_SEARCH, VARIANTS, Database, check_variant, encode_image,
                       encode_query, variant_name)
from .features import (DELF_SCALES, ActivationFeatures, LocalFeatureExtractor, crop,
                       region_descriptors)
from .ivf import InvertedFile
from .kernels import (Aggregated, asmk, asmk_star, assign, binary_similarity, bytes_per_image, gamma, hamming,
                      naive_r_asmk, r_asmk, r_asmk_star, r_vlad, regional_similarities, residual_sums, selectivity,
                      self_similarity, sim_avg, sim_max, similarity, vlad, word_similarities)

__all__ = ["AGGREGATIONS", "DELF_SCALES", "KERNELS", "REGIONAL_SEARCH", "VARIANTS", "ActivationFeatures",
           "Aggregated", "Codebook", "Database", "InvertedFile", "LocalFeatureExtractor", "asmk", "asmk_star",
           "assign", "binary_similarity", "bytes_per_image", "check_variant", "crop", "encode_image",
           "encode_query", "gamma", "hamming", "l2_rows", "learn_codebook", "learn_pca", "naive_r_asmk", "r_asmk",
           "r_asmk_star", "r_vlad", "region_descriptors", "regional_similarities", "regions_per_image",
           "residual_sums", "rmac_boxes", "select_boxes", "selectivity", "self_similarity", "sim_avg", "sim_max",
           "similarity", "variant_name", "vlad", "word_similarities"]
