"""Lightning callbacks shared by every learned model: retrieval evaluation and attention pictures."""
from .attention_viz import AttentionVisualization
from .retrieval_eval import RetrievalEvaluation, gather_rows

__all__ = ["AttentionVisualization", "RetrievalEvaluation", "gather_rows"]
