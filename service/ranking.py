"""The in-memory serving form of one model version, and top-k over it: an exact scan of the
catalogue, or candidates from an approximate index for big catalogues.

A ``ServingModel`` is built once per version (in the reload thread, off the request path) and
never mutated afterwards, so request threads can share it without locks; the model holder swaps
the whole object with one reference assignment.

numpy only, never torch: the server computes dot products and top-k, which numpy's BLAS does as
fast, and importing PyPI's CUDA torch build alone costs ~490 MB of resident memory per server
(``tests/service/test_lean_server.py`` fails if serving imports it).

Approximate top-k: a version with at least ``CCD_ANN_MIN_ITEMS`` items gets an item index
(``service.ann``, faiss) when it is built. A user's answer then starts from the index's
candidates: ``max(64, 2 (k + excluded) / eligible share)`` of them, each re-scored exactly; the
excluded and ineligible ones are dropped, and when fewer than k (the MMR pool with diversity)
are left, 4x more are fetched. When that would exceed 1/16 of the catalogue, the index runs out
of candidates, or the request adds a boost, the exact scan answers. So a filter or exclusion is
never violated (candidates are checked, not trusted), an answer is never shorter than the exact
one, and only the choice among eligible items is approximate (recall@20 in ``ccd bench scale``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from contracts.model_store import ModelSnapshot
from service.ann import ItemIndex, build_item_index
from service.fold_in import fold_in_vector

Strategy = Literal["personalized", "fold_in", "popular"]

# Upper bound on the (B, I) score matrix of one batch chunk, in float32 elements (64 MiB).
_MAX_BATCH_SCORES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Ranked:
    """One ranked list: external item ids with their scores, best first."""

    item_ids: list[str]
    scores: list[float]
    strategy: Strategy


@dataclass(frozen=True, eq=False)
class RankOptions:
    """Request-time controls of one ranking call, aligned to one ``ServingModel``'s item index.

    ``eligible``: (I,) bool, the items the request may get (None: every item); ``boost``: (I,)
    float32 added to every score before ranking (None: no boost); ``diversity``: the MMR
    trade-off in 0..1 (0: the exact top-k, ``mmr_order`` otherwise).
    """

    eligible: np.ndarray | None = None
    boost: np.ndarray | None = None
    diversity: float = 0.0

    @property
    def plain(self) -> bool:
        """Nothing to apply: ranking takes the unfiltered path."""
        return self.eligible is None and self.boost is None and self.diversity == 0.0


PLAIN = RankOptions()
# MMR re-ranks the best max(k * 5, 100) eligible items (bounded work per request).
_MMR_POOL_FACTOR, _MMR_MIN_POOL = 5, 100
# ANN candidates: over-fetch 2x what the answer needs (at least 64), 4x more per refill, never
# beyond 1/16 of the catalogue (at least 256): past that the exact scan is as cheap and exact.
_ANN_OVERFETCH, _ANN_MIN_FETCH, _ANN_GROWTH = 2.0, 64, 4
_ANN_MAX_FETCH_SHARE, _ANN_MIN_MAX_FETCH = 1 / 16, 256


def mmr_order(
    relevance: np.ndarray, unit_vectors: np.ndarray, k: int, diversity: float
) -> np.ndarray:
    """Greedy maximal marginal relevance: positions of ``k`` of the pool's items, in pick order.

    Each step picks the item maximising ``(1 - diversity) * r - diversity * s``, where ``r`` is
    its relevance min-max scaled to 0..1 over the pool and ``s`` its largest cosine similarity to
    the items already picked; ties go to the earlier pool position. O(k * P * d).

    Args:
        relevance: (P,) scores of the pool, best first.
        unit_vectors: (P, d) the pool's item embeddings scaled to unit length (0 rows allowed).
        k: 1..P items to pick.
        diversity: 0..1; 0 keeps the relevance order.

    Examples:
        >>> vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> mmr_order(np.array([3.0, 2.9, 1.0]), vectors, 2, 0.0).tolist()
        [0, 1]
        >>> mmr_order(np.array([3.0, 2.9, 1.0]), vectors, 2, 0.7).tolist()
        [0, 2]
    """
    spread = float(relevance.max() - relevance.min())
    scaled = (relevance - relevance.min()) / spread if spread > 0 else np.zeros_like(relevance)
    picked = [0]
    closest = unit_vectors @ unit_vectors[0]  # (P,) largest similarity to a picked item
    for _ in range(1, k):
        value = (1.0 - diversity) * scaled - diversity * closest
        value[picked] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        np.maximum(closest, unit_vectors @ unit_vectors[best], out=closest)
    return np.asarray(picked)


_SAMPLE_STRIDE = 16  # top_indices: every 16th score bounds the k-th best from below


def top_indices(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` highest of ``scores`` (I,), best first, ties by index; exact.

    The ``depth``-th highest of a strided sample is a lower bound of the ``depth``-th highest
    overall (the sample is a subset), so only the ~``depth * 16`` items at or above it are
    partitioned. All items tied with the last kept score are kept in the pool, then the lowest
    indices among them win. Measured ~1.4x cheaper than partitioning all 41k items.

    Args:
        scores: (I,) finite or -inf (excluded) scores; at least ``depth`` of them finite.
        depth: 1..I.
    """
    sample = scores[::_SAMPLE_STRIDE]
    if depth < sample.size:
        bound = np.partition(sample, sample.size - depth)[sample.size - depth]
        pool = np.flatnonzero(scores >= bound)  # ascending indices
    else:
        pool = np.arange(scores.size)
    values = scores[pool]
    kth = np.partition(values, values.size - depth)[values.size - depth]
    above = pool[values > kth]
    tied = pool[values == kth][: depth - above.size]  # the lowest indices of the tie
    top = np.concatenate([above, tied])
    return top[np.lexsort((top, -scores[top]))]


def _column_major(array: np.ndarray) -> np.ndarray:
    """(I, d) float32 stored column-major: a transposed view of a contiguous (d, I) copy. At
    41k items and d=16 numpy's GEMV (``score_users``) takes ~100 µs on it against ~230 µs on
    the row-major table (one BLAS thread)."""
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32).T).T


def _float32_rows(array: np.ndarray) -> np.ndarray:
    """(U, d) float32, zero-copy when the array already is (decoded snapshots always are)."""
    return np.require(array, dtype=np.float32, requirements=["C_CONTIGUOUS"])


def limit_blas_threads(threads: int = 1) -> None:
    """Caps the BLAS pool of this process (numpy's OpenBLAS: the only BLAS a server loads).

    A server's parallelism is its concurrent requests and its replicas; a second BLAS thread
    per product only adds wake-ups (41k items, d=16, top-20 on a busy 2-core machine: one user
    0.24 ms with one thread vs 0.8 ms with two, a batch of 32 users 8.9 ms vs 58 ms). Called by
    ``ccd serve`` and the benchmark server, not on import: it is process-wide.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


@dataclass(frozen=True, eq=False)
class ServingModel:
    """Precomputed serving state of one version.

    Shapes: ``user_vectors`` (U, d) contiguous, ``item_matrix`` (I, d) column-major float32,
    ``item_inv_norms`` (I,) (0 for zero vectors), ``popularity`` (I,), ``popular_order`` (I,)
    item indices by decreasing popularity (ties by index), ``item_gramian`` (d, d) float64
    = item_matrixᵀ item_matrix (fold-in of new users).
    """

    version: int
    meta: dict[str, Any]
    user_index: dict[str, int]
    item_ids: list[str]
    item_index: dict[str, int]
    user_vectors: np.ndarray
    item_matrix: np.ndarray
    item_inv_norms: np.ndarray
    popularity: np.ndarray
    popular_order: np.ndarray
    item_gramian: np.ndarray
    loaded_at: float = field(default_factory=time.time)
    ann: ItemIndex | None = None

    @classmethod
    def from_snapshot(cls, snapshot: ModelSnapshot, ann_min_items: int = 0) -> ServingModel:
        """The serving form of ``snapshot``, with an item index when it has at least
        ``ann_min_items`` items (0: never; ``service.ann.build_item_index``)."""
        item_matrix = _column_major(snapshot.item_embeddings)
        norms = np.linalg.norm(item_matrix, axis=1)
        inv_norms = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        popularity = np.asarray(snapshot.item_popularity, dtype=np.float32)
        return cls(
            version=snapshot.version,
            meta=dict(snapshot.meta),
            user_index={user: index for index, user in enumerate(snapshot.user_ids)},
            item_ids=list(snapshot.item_ids),
            item_index={item: index for index, item in enumerate(snapshot.item_ids)},
            user_vectors=_float32_rows(snapshot.user_embeddings),
            item_matrix=item_matrix,
            item_inv_norms=inv_norms,
            popularity=popularity,
            popular_order=np.argsort(-popularity, kind="stable"),
            item_gramian=item_matrix.T.astype(np.float64) @ item_matrix.astype(np.float64),
            ann=build_item_index(item_matrix, ann_min_items),
        )

    @property
    def n_users(self) -> int:
        return len(self.user_index)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.item_matrix.shape[1])

    def item_indices(self, item_ids: Iterable[str]) -> list[int]:
        """Indices of the given external ids that this version knows (others are skipped)."""
        lookup = self.item_index.get
        return [index for item in item_ids if (index := lookup(item)) is not None]

    def recommend(
        self, user_id: str, k: int, exclude: Iterable[str] = (), options: RankOptions = PLAIN
    ) -> Ranked:
        """Top-``k`` items for one user, never any of ``exclude``; popularity for unknown users.
        With ``options``: the top-``k`` of the eligible items only (fewer only when fewer are
        eligible), by the boosted scores, re-ordered by MMR when ``diversity`` > 0.

        Examples:
            >>> model = ServingModel.from_snapshot(ModelSnapshot(
            ...     ["u"], ["a", "b", "c"], np.ones((1, 1)), np.array([[3.0], [2.0], [1.0]]),
            ...     np.zeros(3)))
            >>> model.recommend("u", 2).item_ids
            ['a', 'b']
            >>> model.recommend("u", 2, options=RankOptions(np.array([True, False, True]))).item_ids
            ['a', 'c']
        """
        return self.recommend_many([user_id], k, [exclude], options)[0]

    def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int,
        excludes: Sequence[Iterable[str]],
        options: RankOptions = PLAIN,
        histories: Sequence[Iterable[str]] | None = None,
    ) -> list[Ranked]:
        """Like ``recommend`` for each user; known users are scored together, chunked so that
        one (B, I) score matrix stays under ~64 MiB. A user this version does not know is
        folded in from their ``histories`` entry (the items the server saw them have;
        ``service.fold_in``), or gets the popular items when none of those is in the model.

        Examples:
            >>> model = ServingModel.from_snapshot(ModelSnapshot(
            ...     ["u"], ["a", "b", "c"], np.ones((1, 2)),
            ...     np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]]), np.array([5.0, 1.0, 0.0])))
            >>> [r.item_ids + [r.strategy] for r in model.recommend_many(
            ...     ["new", "newer"], 1, [["b"], []], histories=[["b"], []])]
            [['c', 'fold_in'], ['a', 'popular']]
        """
        excluded = [sorted(set(self.item_indices(items))) for items in excludes]
        results: list[Ranked | None] = [None] * len(user_ids)
        known: list[int] = []
        for position, user in enumerate(user_ids):
            if user in self.user_index:
                known.append(position)
                continue
            history = self.item_indices(histories[position]) if histories else []
            if history:
                vector = self.fold_in(history)
                ranked = self._rank_vector(vector, k, excluded[position], options, "fold_in")
                results[position] = ranked
            else:
                results[position] = self._popular(k, excluded[position], options)
        if self.ann is not None:  # one user at a time: the index answers per vector
            for position in known:
                vector = self.user_vectors[self.user_index[user_ids[position]]]
                results[position] = self._rank_vector(vector, k, excluded[position], options)
            return results  # type: ignore[return-value]
        chunk = max(1, _MAX_BATCH_SCORES // max(1, self.n_items))
        for start in range(0, len(known), chunk):
            positions = known[start : start + chunk]
            rows = [self.user_index[user_ids[p]] for p in positions]
            ranked = self._personalized(rows, k, [excluded[p] for p in positions], options)
            for position, result in zip(positions, ranked, strict=True):
                results[position] = result
        return results  # type: ignore[return-value]

    def _personalized(
        self, user_rows: list[int], k: int, excluded: list[list[int]], options: RankOptions
    ) -> list[Ranked]:
        """Exact scores over the whole catalogue, each row's top-k by ``top_indices`` (measured
        ~1.5x cheaper per row than a full top-k over a (B, I) matrix masked to -inf)."""
        scores = self.score_users(user_rows)  # (B, I)
        return [
            self._top_of_row(row_scores, k, items, options)
            for row_scores, items in zip(scores, excluded, strict=True)
        ]

    def _rank_vector(
        self,
        vector: np.ndarray,
        k: int,
        excluded: list[int],
        options: RankOptions = PLAIN,
        strategy: Strategy = "personalized",
    ) -> Ranked:
        """Top-``k`` for one user vector (d,): from the item index's candidates when this
        version has one and the request adds no boost, else (or when the candidates cannot fill
        the answer) by the exact scan."""
        if self.ann is not None and options.boost is None:
            ranked = self._ann_top(vector, k, excluded, options, strategy)
            if ranked is not None:
                return ranked
        return self._top_of_row(self.item_matrix @ vector, k, excluded, options, strategy)

    def _ann_top(
        self,
        vector: np.ndarray,
        k: int,
        excluded: list[int],
        options: RankOptions,
        strategy: Strategy,
    ) -> Ranked | None:
        """Top-``k`` of the eligible, non-excluded items among the index's candidates for
        ``vector`` (d,), refilled 4x while too few survive; None: let the exact scan answer
        (too few eligible items for the index to find them cheaply)."""
        assert self.ann is not None
        eligible = options.eligible
        share = 1.0 if eligible is None else np.count_nonzero(eligible) / self.n_items
        pool = k if options.diversity == 0 else max(k * _MMR_POOL_FACTOR, _MMR_MIN_POOL)
        if share == 0:
            return None
        fetch = max(_ANN_MIN_FETCH, math.ceil((pool + len(excluded)) * _ANN_OVERFETCH / share))
        limit = max(_ANN_MIN_MAX_FETCH, int(self.n_items * _ANN_MAX_FETCH_SHARE))
        while fetch <= limit:
            found = self.ann.search(vector, fetch)
            keep = found if eligible is None else found[eligible[found]]
            if excluded:
                keep = keep[~np.isin(keep, excluded)]
            if keep.size >= pool:
                return self._rank_candidates(np.sort(keep), vector, k, options, strategy)
            if found.size < fetch:  # the probed lists hold no more: only the scan can do better
                return None
            fetch *= _ANN_GROWTH
        return None

    def _rank_candidates(
        self,
        candidates: np.ndarray,
        vector: np.ndarray,
        k: int,
        options: RankOptions,
        strategy: Strategy,
    ) -> Ranked:
        """The top-``k`` (MMR-ordered with diversity) of ``candidates`` (C,) ascending item
        rows, by exact scores with ``vector`` (d,); ties go to the lower item row."""
        scores = self.item_matrix[candidates] @ vector  # (C,)
        pool = k if options.diversity == 0 else max(k * _MMR_POOL_FACTOR, _MMR_MIN_POOL)
        best = top_indices(scores, min(pool, candidates.size))
        top, values = candidates[best], scores[best]
        if options.diversity > 0:
            units = self.item_matrix[top] * self.item_inv_norms[top, None]
            order = mmr_order(values, units, min(k, top.size), options.diversity)
            top, values = top[order], values[order]
        return Ranked([self.item_ids[item] for item in top.tolist()], values.tolist(), strategy)

    def _top_of_row(
        self,
        scores: np.ndarray,
        k: int,
        excluded: list[int],
        options: RankOptions = PLAIN,
        strategy: Strategy = "personalized",
    ) -> Ranked:
        """Top-``k`` of one user's scores (I,), which it overwrites (``top_indices``)."""
        if not options.plain:
            return self._top_of_eligible(scores, k, excluded, options, strategy)
        if excluded:
            scores[excluded] = -np.inf
        depth = min(k, self.n_items - len(excluded))
        if depth <= 0:
            return Ranked([], [], strategy)
        top = top_indices(scores, depth)
        return Ranked(
            [self.item_ids[item] for item in top.tolist()], scores[top].tolist(), strategy
        )

    def _top_of_eligible(
        self,
        scores: np.ndarray,
        k: int,
        excluded: list[int],
        options: RankOptions,
        strategy: Strategy,
    ) -> Ranked:
        """The exact top-``k`` of the eligible, non-excluded items by (boosted) ``scores`` (I,),
        which it may overwrite. When most items are eligible the others are set to -inf in
        place; when few are, the eligible indices are gathered first (``np.flatnonzero`` of the
        combined mask), so 0.1 % eligible ranks 41 items, not 41k."""
        if options.boost is not None:
            scores += options.boost
        if options.eligible is None:
            eligible = np.ones(self.n_items, dtype=bool)
        else:
            eligible = options.eligible.copy()
        eligible[excluded] = False
        count = int(np.count_nonzero(eligible))
        pool_size = min(k, count)
        if options.diversity > 0:
            pool_size = min(count, max(k * _MMR_POOL_FACTOR, _MMR_MIN_POOL))
        if pool_size <= 0:
            return Ranked([], [], strategy)
        if count * 2 > self.n_items:
            scores[~eligible] = -np.inf
            top = top_indices(scores, pool_size)
        else:
            candidates = np.flatnonzero(eligible)  # ascending: ties still go to the lower index
            top = candidates[top_indices(scores[candidates], pool_size)]
        if options.diversity > 0:
            units = self.item_matrix[top] * self.item_inv_norms[top, None]
            top = top[mmr_order(scores[top], units, min(k, top.size), options.diversity)]
        return Ranked(
            [self.item_ids[item] for item in top.tolist()], scores[top].tolist(), strategy
        )

    def fold_in(self, item_rows: list[int]) -> np.ndarray:
        """(d,) float32 vector of a user this version does not know, from their item rows."""
        vector = fold_in_vector(self.item_matrix, self.item_gramian, np.asarray(item_rows))
        return vector.astype(np.float32)

    def score_users(self, user_rows: list[int]) -> np.ndarray:
        """Dot-product scores of the given users over the whole catalogue, (B, I) float32: a new
        array the caller may modify. The one place a different scoring rule plugs in (the teacher
        ensemble of ``bench.teacher``).

        One GEMV per row into the (B, I) result, not one (B, d) x (d, I) GEMM: at d=16 OpenBLAS's
        SGEMM packs more than it multiplies (measured per user at 41k items, one thread: GEMV
        60-73 µs for B = 2..32, GEMM 355 µs at B=2, 118 at B=8, 90 at B=32), and the 2.6 MB
        item table stays in cache from one row to the next.
        """
        scores = np.empty((len(user_rows), self.n_items), dtype=np.float32)
        for out, row in zip(scores, user_rows, strict=True):
            np.matmul(self.item_matrix, self.user_vectors[row], out=out)
        return scores

    def _popular(self, k: int, excluded: list[int], options: RankOptions = PLAIN) -> Ranked:
        """The ``k`` most popular items the user has not seen; the score is the popularity
        (plus the boost, with ``options``)."""
        if not options.plain:
            return self._top_of_eligible(self.popularity.copy(), k, excluded, options, "popular")
        head = self.popular_order[: k + len(excluded)]
        if excluded:
            head = head[~np.isin(head, excluded)]
        head = head[:k]
        return Ranked(
            [self.item_ids[item] for item in head.tolist()],
            self.popularity[head].tolist(),
            "popular",
        )

    def similar(self, item_id: str, k: int, options: RankOptions = PLAIN) -> Ranked:
        """The ``k`` items closest to ``item_id`` by cosine similarity of the item embeddings
        (the item itself excluded; ties by the lower item index), among the eligible ones with
        ``options``. Raises ``KeyError`` for an unknown item."""
        index = self.item_index[item_id]
        scores = self.item_matrix @ self.item_matrix[index]  # (I,)
        scores *= self.item_inv_norms * self.item_inv_norms[index]
        if not options.plain:
            return self._top_of_eligible(scores, k, [index], options, "personalized")
        depth = min(k, self.n_items - 1)
        if depth <= 0:
            return Ranked([], [], "personalized")
        scores[index] = -np.inf
        top = top_indices(scores, depth)
        return Ranked(
            [self.item_ids[item] for item in top.tolist()], scores[top].tolist(), "personalized"
        )
