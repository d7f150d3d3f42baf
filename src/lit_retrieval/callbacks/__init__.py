"""Lightning callbacks shared by every learned model: retrieval evaluation during training."""
from .retrieval_eval import RetrievalEvaluation, gather_rows

__all__ = ["RetrievalEvaluation", "gather_rows"]
