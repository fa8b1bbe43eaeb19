"""Full-ranking top-K metrics (ccd-method.md §4.1) and continual aggregation (§4.2).

Everything is computed in chunks of users: only a (chunk, I) score block exists at a time, at
most ``losses.BLOCK_BYTES`` of it when the scorer states its item count (measured: 1,000 users
over 20k items evaluate ~1.4x faster in blocks of ~200 rows than in one (1000, I) block).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from models.api import Embeddings, Interactions
from models.data import CSR, gather_rows, user_item_lists
from models.losses import block_rows

Scorer = Callable[[Tensor], Tensor]
"""users (B,) long -> scores (B, I) float, higher = better."""


class SizedScorer:
    """A scorer that knows its table sizes, so evaluation can skip users beyond them, and the
    device its tables are on (where the user ids it is called with should be)."""

    def __init__(
        self, fn: Scorer, n_users: int, n_items: int, device: torch.device | str = "cpu"
    ) -> None:
        self.fn, self.n_users, self.n_items = fn, n_users, n_items
        self.device = torch.device(device)

    def __call__(self, users: Tensor) -> Tensor:
        with torch.no_grad():
            return self.fn(users)


def embedding_scorer(emb: Embeddings) -> SizedScorer:
    """Dot-product scorer over serving embeddings: users (B,) -> (B, I)."""
    n_users, n_items = int(emb.users.shape[0]), int(emb.items.shape[0])
    return SizedScorer(
        lambda users: emb.users[users] @ emb.items.T, n_users, n_items, emb.users.device
    )


def member_scorer(member: Any) -> SizedScorer:
    """Scorer of a ``models.members.Member`` (its ``full_scores``, without autograd)."""
    return SizedScorer(member.full_scores, member.n_users, member.n_items, member.device)


def scorer_device(scorer: Scorer, default: torch.device | str = "cpu") -> torch.device:
    """Where ``scorer`` wants its user ids: a ``SizedScorer``'s device, else ``default``."""
    return torch.device(getattr(scorer, "device", default))


def merge_interactions(parts: Sequence[Interactions]) -> Interactions:
    """``parts`` one after the other; weights (ones where a part has none) only if some part
    has them."""
    device = parts[0].device if parts else None
    parts = [p for p in parts if len(p)]
    if not parts:
        return Interactions.empty(device)
    weights = None
    if any(p.weights is not None for p in parts):
        weights = torch.cat([p.weight_values() for p in parts])
    return Interactions(
        torch.cat([p.users.long() for p in parts]),
        torch.cat([p.items.long() for p in parts]),
        weights,
    )


def union_pairs(parts: list[Interactions], n_items: int) -> Interactions:
    """The distinct (user, item) pairs of ``parts`` (item ids < ``n_items``), sorted by user; a
    pair listed several times keeps its largest weight (weights only where ``parts`` have any)."""
    merged = merge_interactions(parts)
    keys, slot = torch.unique(merged.users * n_items + merged.items, return_inverse=True)
    weights = None
    if merged.weights is not None:
        weights = torch.zeros(len(keys), device=keys.device).scatter_reduce(
            0, slot, merged.weights, "amax"
        )
    return Interactions(keys // n_items, keys % n_items, weights)


def exclusion_csr(exclude: Sequence[Interactions]) -> CSR | None:
    """CSR of the union of ``exclude`` (rows up to the largest user id), or None if empty."""
    merged = merge_interactions(exclude)
    if len(merged) == 0:
        return None
    return user_item_lists(merged, int(merged.users.max()) + 1)


def _rows_per_chunk(scorer: Scorer, chunk: int) -> int:
    n_items = getattr(scorer, "n_items", None)
    return chunk if n_items is None else max(1, min(chunk, block_rows(n_items)))


def _masked_scores(scorer: Scorer, users: Tensor, exclude_csr: CSR | None) -> Tensor:
    """(B, I) scores, excluded items set to -inf in place (scorers return a new tensor)."""
    scores = scorer(users).float()
    if exclude_csr is not None:
        rows, cols = gather_rows(*exclude_csr, users)
        keep = cols < scores.shape[1]
        scores.index_put_((rows[keep], cols[keep]), scores.new_full((), -math.inf))
    return scores


def topk_items(
    scorer: Scorer, users: Tensor, k: int, exclude_csr: CSR | None = None, chunk: int = 1024
) -> Tensor:
    """Top-``k`` item ids per user, shape (B, k), excluded items masked (they sort last).

    Args:
        exclude_csr: ``(indptr, indices)`` of items to exclude per user (users beyond it: none).
    """
    out = []
    chunk = _rows_per_chunk(scorer, chunk)
    for start in range(0, users.numel(), chunk):
        scores = _masked_scores(scorer, users[start : start + chunk], exclude_csr)
        out.append(torch.topk(scores, min(k, scores.shape[1]), dim=1).indices)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=users.device)


def ranking_metrics(
    scorer: Scorer,
    eval: Interactions,
    exclude: Sequence[Interactions],
    ks: Sequence[int] = (20, 50),
    chunk: int = 1024,
    n_users: int | None = None,
    users: Tensor | None = None,
) -> dict[str, float]:
    """Recall@K, NDCG@K and normalised precision P@K over ``eval``'s users (full ranking).

    Protocol (§4.1): the ground truth of user u is the distinct items of u in ``eval``; items
    of u in ``exclude`` are removed from the ranking; Recall = hits/|GT|, NDCG ideal DCG over
    min(|GT|, K) positions, P = hits/min(K, |GT|); averaged over evaluated users.

    Args:
        n_users: the model's user count; users with id >= it are skipped. Default: the scorer's
            ``n_users`` attribute if it has one, else no skipping.
        users: optional subset of user ids to evaluate (e.g. the block's new users).

    Returns:
        {"recall@K", "ndcg@K", "p@K" for each K, "users": number evaluated}; zeros if none.
    """
    ks = sorted(ks)
    # The ids go where the scorer's tables are (a scorer that does not say: where they are).
    device = scorer_device(scorer, eval.device)
    eval, exclude = eval.to(device), [part.to(device) for part in exclude]
    users = None if users is None else users.to(device)
    n_users = n_users if n_users is not None else getattr(scorer, "n_users", None)
    result = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg", "p")}
    result["users"] = 0
    if len(eval) == 0:
        return result
    gt_indptr, gt_indices = user_item_lists(eval, int(eval.users.max()) + 1)
    candidates = torch.nonzero(gt_indptr[1:] > gt_indptr[:-1]).flatten()
    if n_users is not None:
        candidates = candidates[candidates < n_users]
    if users is not None:
        candidates = candidates[torch.isin(candidates, users.long())]
    exclude_csr = exclusion_csr(exclude)
    max_k = ks[-1]
    discounts = 1.0 / torch.log2(
        torch.arange(2, max_k + 2, dtype=torch.float64, device=candidates.device)
    )
    ideal = torch.cumsum(discounts, 0)
    sums = {key: 0.0 for key in result if key != "users"}
    chunk = _rows_per_chunk(scorer, chunk)
    for start in range(0, candidates.numel(), chunk):
        batch = candidates[start : start + chunk]
        scores = _masked_scores(scorer, batch, exclude_csr)
        values, top = torch.topk(scores, min(max_k, scores.shape[1]), dim=1)
        rows, cols = gather_rows(gt_indptr, gt_indices, batch)
        n_gt = torch.bincount(rows, minlength=batch.numel()).double()
        keep = cols < scores.shape[1]
        is_gt = torch.zeros_like(scores, dtype=torch.bool)
        is_gt[rows[keep], cols[keep]] = True
        hits = (is_gt.gather(1, top) & torch.isfinite(values)).double()
        hits = torch.nn.functional.pad(hits, (0, max_k - hits.shape[1]))
        for k in ks:
            n_hits = hits[:, :k].sum(1)
            best = torch.clamp(n_gt, max=k)
            sums[f"recall@{k}"] += float((n_hits / n_gt).sum())
            sums[f"p@{k}"] += float((n_hits / best).sum())
            dcg = (hits[:, :k] * discounts[:k]).sum(1)
            sums[f"ndcg@{k}"] += float((dcg / ideal[best.long() - 1]).sum())
    n_eval = candidates.numel()
    if n_eval:
        result.update({key: value / n_eval for key, value in sums.items()})
    result["users"] = n_eval
    return result


def la_ra_hmean(
    R: Mapping[int, Mapping[int, float]] | Sequence[Sequence[float]], k: int, include_d0: bool
) -> tuple[float, float, float]:
    """LA_k, RA_k and their harmonic mean from R[t][j] = metric on block j after block t (§4.2).

    Follows the first author's ``continual_evaluate``: with ``include_d0`` the base block counts
    in both averages, LA_k = mean_{t=0..k} R[t][t] and RA_k = mean_{j=0..k-1} R[k][j]; without,
    t and j start at 1. An empty average (k=0, or k=1 without D0) is NaN, and so is H then.

    Examples:
        >>> R = [[0.4, 0.0], [0.2, 0.3]]  # R[1][0] = 0.2: block 0's metric after block 1
        >>> la_ra_hmean(R, 1, include_d0=True)  # LA = (0.4 + 0.3) / 2, RA = 0.2
        (0.35, 0.2, 0.2545...)
        >>> la_ra_hmean(R, 1, include_d0=False)
        (0.3, nan, nan)
    """
    first = 0 if include_d0 else 1
    la_terms = [R[t][t] for t in range(first, k + 1)]
    ra_terms = [R[k][j] for j in range(first, k)]
    la = sum(la_terms) / len(la_terms) if la_terms else math.nan
    ra = sum(ra_terms) / len(ra_terms) if ra_terms else math.nan
    if math.isnan(la) or math.isnan(ra):
        return la, ra, math.nan
    h = 2 * la * ra / (la + ra) if la + ra > 0 else 0.0
    return la, ra, h


class ContinualMatrix:
    """R[k][j] per metric: the metric on block j's test set after training through block k."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, dict[int, float]]] = {}

    def record(self, k: int, j: int, metrics: Mapping[str, float]) -> None:
        """Store every entry of ``metrics`` (e.g. a ``ranking_metrics`` result) at (k, j)."""
        for name, value in metrics.items():
            self.values.setdefault(name, {}).setdefault(k, {})[j] = float(value)

    def get(self, metric: str, k: int, j: int) -> float | None:
        return self.values.get(metric, {}).get(k, {}).get(j)

    def matrix(self, metric: str) -> dict[int, dict[int, float]]:
        """R for one metric, indexable as R[k][j] (pass it to ``la_ra_hmean``)."""
        return self.values[metric]

    @property
    def metrics(self) -> list[str]:
        return sorted(self.values)

    @property
    def last_block(self) -> int:
        return max((k for rows in self.values.values() for k in rows), default=-1)

    def summary(self, metric: str, include_d0: bool) -> dict[int, tuple[float, float, float]]:
        """{k: (LA_k, RA_k, H_k)} for every block k with a complete row and diagonal."""
        R = self.matrix(metric)
        out = {}
        for k in sorted(R):
            if all(t in R and t in R[t] for t in range(k + 1)) and all(j in R[k] for j in range(k)):
                out[k] = la_ra_hmean(R, k, include_d0)
        return out

    def to_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """Plain JSON-able form: {metric: {str(k): {str(j): value}}}."""
        return {
            name: {str(k): {str(j): v for j, v in row.items()} for k, row in rows.items()}
            for name, rows in self.values.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Mapping[str, float]]]) -> ContinualMatrix:
        matrix = cls()
        matrix.values = {
            name: {int(k): {int(j): float(v) for j, v in row.items()} for k, row in rows.items()}
            for name, rows in data.items()
        }
        return matrix
