"""Post-processing stages compose on a Rankings: recorded stages keep their rankings, unrecorded ones only change
them, and average / α QE as a stage equals expanding and searching by hand."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lit_retrieval.retrieval import expand_queries, search
from lit_retrieval.retrieval.interface import Rankings, Reranker, rerank
from lit_retrieval.retrieval.qe import DescriptorIndex, QueryExpansion


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rankings(seed: int = 0) -> Rankings:
    rng = np.random.default_rng(seed)
    db, q = _unit(rng.normal(size=(40, 16))), _unit(rng.normal(size=(5, 16)))
    scores, ranks = search(q, db)
    return Rankings(ranks, scores=scores, index=DescriptorIndex(q, db))


@dataclass
class Reverse:
    name: str = "reversed"
    record: bool = True

    def __call__(self, rankings: Rankings) -> Rankings:
        return replace(rankings, ranks=rankings.ranks[:, ::-1].copy(), scores=None)


def test_recorded_stages_are_kept_with_the_input_first():
    r = _rankings()
    assert isinstance(Reverse(), Reranker) and isinstance(QueryExpansion(), Reranker)
    out = rerank(r, [Reverse(), Reverse(name="again")])
    assert list(out.stages) == ["initial", "reversed", "again"]
    np.testing.assert_array_equal(out.stages["initial"], r.ranks)
    np.testing.assert_array_equal(out.stages["reversed"], r.ranks[:, ::-1])
    np.testing.assert_array_equal(out.ranks, r.ranks)  # reversed twice
    assert r.stages == {}  # the input is left as it was


def test_query_expansion_as_a_stage_equals_expanding_by_hand():
    r = _rankings(1)
    for alpha in (0.0, 3.0):
        out = rerank(r, [QueryExpansion(k=3, alpha=alpha)])
        q = expand_queries(r.index.queries, r.index.database, r.ranks, r.scores, k=3, alpha=alpha)
        want_scores, want = search(q, r.index.database)
        np.testing.assert_array_equal(out.ranks, want)
        np.testing.assert_allclose(out.scores, want_scores)
        assert out.stages == {}  # not a recorded stage: results.json reports the expanded ranking
        np.testing.assert_allclose(out.index.queries, q)
    then = rerank(r, [QueryExpansion(k=3), Reverse()])  # a recorded stage after QE starts from the expanded ranks
    np.testing.assert_array_equal(then.stages["initial"], rerank(r, [QueryExpansion(k=3)]).ranks)
