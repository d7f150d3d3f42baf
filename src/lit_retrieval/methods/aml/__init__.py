"""Tolias, Sicre & Jégou (ICLR 2016): MAC / R-MAC filtering (``retriever``), re-ranking by localization
(approximate integral max-pooling, AML), window query expansion, activation storage (see README.md here)."""
from .aml import AMLSettings, Localization, localize, localize_exhaustive, refine, window_scores
from .integral import (Workspace, aml_c_root, approx_region_max, exact_region_max, generalized_max, power_integral,
                       window_sums)
from .rerank import (AMLQuery, Reranked, WindowDescriptor, rerank_shortlist, window_descriptors,
                     window_query_expansion)
from .storage import ActivationStore, decode, encode, quantize
from .windows import candidate_windows, count_all_windows, grid_windows

__all__ = ["AMLQuery", "AMLSettings", "ActivationStore", "Localization", "Reranked", "WindowDescriptor", "Workspace",
           "aml_c_root", "approx_region_max", "candidate_windows", "count_all_windows", "decode", "encode",
           "exact_region_max", "generalized_max", "grid_windows", "localize", "localize_exhaustive", "power_integral",
           "quantize", "refine", "rerank_shortlist", "window_descriptors", "window_query_expansion", "window_scores",
           "window_sums"]
