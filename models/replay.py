"""Proxy-guided replay (ccd-method.md §3.4c, §3.5.5) and the chunked score utilities it needs.

For a source X (a proxy, or the continual student) and a reference ranking W (the starting
student in Stage 2, the teacher itself in Stage 3), each user u of X draws n_X items WITHOUT
replacement with probability

    p_X(i | u) ∝ exp(eps · (rank_W(u, i) - rank_X(u, i))) · 1[rank_X(u, i) < N_abs],

i.e. among X's top-N_abs, preferring items X ranks much higher than W ("forgotten" knowledge).
The label is sigmoid(X's score). Samples of several sources are pooled, keeping the max label of
a duplicated (u, i). Everything runs per chunk of users: one (chunk, I) score block at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.data import CSR, gather_rows
from models.device import rand, randperm
from models.losses import block_rows

Scorer = Callable[[Tensor], Tensor]
FILTERED = -1e8  # the code's score for filtered (already interacted) items


@dataclass
class ReplaySet:
    """Replay triples: ``users`` (n,), ``items`` (n,) int64 and soft ``labels`` (n,) float32."""

    users: Tensor
    items: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.users.numel())

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> ReplaySet:
        """No triples, on ``device`` (None: torch's default device)."""
        e = torch.empty(0, dtype=torch.long, device=device)
        return cls(e, e.clone(), torch.empty(0, device=device))


def fill_rows_(scores: Tensor, users: Tensor, csr: CSR | None, value: float = FILTERED) -> Tensor:
    """Set ``scores[b, i] = value`` for every item i of user ``users[b]`` in ``csr``, in place.

    Args:
        scores: (B, I) score block of ``users`` (B,); items >= I in the CSR are ignored.
    """
    if csr is None:
        return scores
    rows, cols = gather_rows(*csr, users)
    keep = cols < scores.shape[1]
    scores[rows[keep], cols[keep]] = value
    return scores


def capped_chunk(chunk: int, n_cols: int | None, itemsize: int = 4) -> int:
    """``chunk`` rows, fewer if a (rows, n_cols) block would exceed ``losses.BLOCK_BYTES``."""
    return chunk if n_cols is None else max(1, min(chunk, block_rows(n_cols, itemsize)))


def top_items_padded(
    scorer: Scorer,
    n_scored: int,
    n_rows: int,
    k: int,
    filters: Sequence[CSR | None] = (),
    chunk: int = 1024,
) -> Tensor:
    """Each user's top-``k`` items (a negative-exclusion list), shape (n_rows, k), -1 padded.

    Users 0..n_scored-1 are scored (after setting ``filters``' items to -1e8, as the code's
    ``filtering_simple``); rows n_scored..n_rows-1 (users the model does not know) are -1. The
    lists are on the scorer's device (``metrics.scorer_device``).
    """
    device = getattr(scorer, "device", torch.device("cpu"))
    out = torch.full((n_rows, k), -1, dtype=torch.long, device=device)
    chunk = capped_chunk(chunk, getattr(scorer, "n_items", None))
    with torch.no_grad():
        for start in range(0, min(n_scored, n_rows), chunk):
            batch = torch.arange(start, min(start + chunk, n_scored, n_rows), device=device)
            scores = scorer(batch).float()
            for csr in filters:
                fill_rows_(scores, batch, csr)
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
            out[batch, : top.shape[1]] = top
    return out


def concat_lists(*lists: Tensor | None) -> Tensor | None:
    """Column-concatenate -1-padded per-user item lists (n_i, m_i) with different row counts;
    missing rows become -1. None entries are skipped; None if nothing is left."""
    parts = [x for x in lists if x is not None]
    if not parts:
        return None
    rows = max(x.shape[0] for x in parts)
    out = torch.full(
        (rows, sum(x.shape[1] for x in parts)), -1, dtype=torch.long, device=parts[0].device
    )
    col = 0
    for x in parts:
        out[: x.shape[0], col : col + x.shape[1]] = x
        col += x.shape[1]
    return out


def descending_order(scores: Tensor) -> Tensor:
    """Column ids of each row by descending score, ties by ascending id (a stable sort).

    Same result as ``torch.sort(scores, 1, descending=True, stable=True).indices`` for scores
    without NaN, ~5x faster on CPU: each (score, id) pair is packed into one int64 key (the
    float bits mapped to an order-reversing integer, then the id) and the keys are sorted by
    numpy's vectorised integer sort, in place, no index array carried along. Off the CPU it is
    that stable torch sort.

    Args:
        scores: (B, N) scores (+-inf allowed).

    Returns:
        (B, N) int64.

    Examples:
        >>> descending_order(torch.tensor([[0.1, 0.9, 0.1, 0.5]]))  # the tie: id 0 before 2
        tensor([[1, 3, 0, 2]])
    """
    n = scores.shape[1]
    shift = max(n - 1, 1).bit_length()
    if shift > 31 or scores.device.type != "cpu":
        return torch.sort(scores, dim=1, descending=True, stable=True).indices
    bits = np.add(scores.detach().float().numpy(), np.float32(0.0)).view(np.int32)  # -0 -> 0
    flip = np.right_shift(bits, 31)
    np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
    np.bitwise_xor(flip, bits, out=flip)  # order-preserving int32 of the float
    np.invert(flip, out=flip)  # order-reversing: ascending keys = descending scores
    keys = flip.astype(np.int64)
    np.left_shift(keys, shift, out=keys)
    np.bitwise_or(keys, np.arange(n, dtype=np.int64), out=keys)
    keys.sort(axis=1)
    np.bitwise_and(keys, (1 << shift) - 1, out=keys)
    return torch.from_numpy(keys)


def column_ranks(scores: Tensor, columns: Tensor) -> Tensor:
    """0-based rank of ``columns`` (B, m) in their row's stable descending order of ``scores``
    (B, N), i.e. ``rank_matrix(scores).gather(1, columns)`` without the full (B, N) ranks.

    rank(c) = #{j: s_j > s_c} + #{j < c: s_j == s_c}: one float sort of the values (no ids)
    and a binary search per column; the rare ties are counted directly.
    """
    scores = scores.float().contiguous()
    return ranks_in_sorted(scores, ascending_rows(scores), columns)


def ascending_rows(scores: Tensor) -> Tensor:
    """(B, N) each row of float32 ``scores`` sorted ascending (values only): what
    ``ranks_in_sorted`` searches, computed once when several sources rank against one row.
    numpy's sort on the CPU (faster there), torch's elsewhere."""
    if scores.device.type != "cpu":
        return torch.sort(scores.detach(), dim=1).values
    return torch.from_numpy(np.sort(scores.detach().numpy(), axis=1))


def ranks_in_sorted(scores: Tensor, ascending: Tensor, columns: Tensor) -> Tensor:
    """``column_ranks(scores, columns)`` given ``ascending = ascending_rows(scores)``."""
    n = scores.shape[1]
    values = scores.gather(1, columns)
    not_above = torch.searchsorted(ascending, values, right=True)
    above = n - not_above
    tied = (not_above - torch.searchsorted(ascending, values) > 1).nonzero()
    if tied.numel():  # ties broken by column id, as a stable sort does
        rows, cols = tied[:, 0], columns[tied[:, 0], tied[:, 1]]
        before = torch.arange(n, device=scores.device).unsqueeze(0) < cols.unsqueeze(1)
        same = scores[rows] == values[tied[:, 0], tied[:, 1]].unsqueeze(1)
        above[tied[:, 0], tied[:, 1]] += (same & before).sum(1)
    return above


def rank_matrix(scores: Tensor) -> Tensor:
    """0-based rank of each entry in its row's descending order (ties by column id), (B, I).

    Examples:
        >>> rank_matrix(torch.tensor([[0.1, 0.9, 0.1, 0.5]]))
        tensor([[2, 0, 3, 1]])
    """
    order = descending_order(scores)
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def sample_without_replacement(
    log_weights: Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` columns per row without replacement, P ∝ exp(log_weights), sequentially.

    Gumbel-top-k: the top n of log_weights + Gumbel noise is distributed exactly like n
    successive draws without replacement (the same distribution as
    ``torch.multinomial(weights, n, replacement=False)``), but it takes log-weights (no
    overflow) and rows with fewer than ``n`` admissible columns (log-weight -inf) are allowed.

    Args:
        log_weights: (B, N); -inf = not admissible.

    Returns:
        (indices (B, n') int64, valid (B, n') bool) with n' = min(n, N); ``valid`` is False
        where a row ran out of admissible columns.
    """
    n = min(n, log_weights.shape[1])
    uniform = rand(tuple(log_weights.shape), generator, log_weights.device).clamp_(min=1e-20)
    keys = log_weights - torch.log(-torch.log(uniform))
    values, indices = torch.topk(keys, n, dim=1)
    return indices, torch.isfinite(values)


def sample_replay(
    source: Scorer,
    reference: Scorer,
    users: Tensor,
    n_samples: int,
    n_abs: int,
    eps: float,
    source_filters: Sequence[CSR | None] = (),
    generator: torch.Generator | None = None,
    chunk: int = 512,
) -> ReplaySet:
    """Proxy-guided replay samples of one source for ``users`` (the source's rows).

    Args:
        source: X's scorer, (B,) -> (B, I_X); its items ranked in X's order.
        reference: W's scorer, (B,) -> (B, I_W) with I_W >= I_X (its rows cover ``users``).
        n_samples: n_X per user; n_abs: N_abs; eps: the rank-gap temperature (1e-4).
        source_filters: CSRs of items set to -1e8 in X's scores before ranking and labelling
            (the code filters the proxies with the previous and current block's train items).

    Returns:
        the sampled (user, item, sigmoid(X score)) triples.
    """
    if n_samples <= 0 or users.numel() == 0:
        return ReplaySet.empty(users.device)
    candidates = replay_candidates(source, reference, users, n_abs, eps, source_filters, chunk)
    return draw_replay(candidates, n_samples, generator)


@dataclass
class ReplayCandidates:
    """What a replay draw of one source needs, per chunk of users: ``users`` (B,), X's top
    ``items`` (B, m) in X's order, their ``labels`` sigmoid(X score) (B, m) and the sampling
    ``log_weights`` eps (rank_W - rank_X) (B, m). Only the draw itself is random: while X and W
    stay fixed (Stage 2 against the starting student) every re-draw reuses these."""

    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]]


def replay_candidates(
    source: Scorer,
    reference: Scorer,
    users: Tensor,
    n_abs: int,
    eps: float,
    source_filters: Sequence[CSR | None] = (),
    chunk: int = 512,
) -> ReplayCandidates:
    """The deterministic part of ``sample_replay`` (arguments as there): the costly part, a
    rank of X's candidates among all of W's items per user."""
    return shared_replay_candidates(
        [(source, users)], reference, n_abs, eps, source_filters, chunk
    )[0]


def shared_replay_candidates(
    sources: Sequence[tuple[Scorer, Tensor]],
    reference: Scorer,
    n_abs: int,
    eps: float,
    source_filters: Sequence[CSR | None] = (),
    chunk: int = 512,
) -> list[ReplayCandidates]:
    """``replay_candidates`` of several (source, users) against one reference, each chunk of
    the reference's rows scored and sorted once for all of them (the sort is most of the cost).
    Each source's ``users`` must be a prefix of the longest one (e.g. ``arange(n)``); the result
    is the same as one ``replay_candidates`` call per source."""
    longest = max((users for _, users in sources), key=lambda users: users.numel())
    for _, users in sources:
        if not torch.equal(users, longest[: users.numel()]):
            raise ValueError("each source's users must be a prefix of the longest source's")
    chunk = capped_chunk(chunk, getattr(reference, "n_items", None))
    parts: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = [[] for _ in sources]
    with torch.no_grad():
        for start in range(0, longest.numel(), chunk):
            batch = longest[start : start + chunk]
            ref_scores = reference(batch).float().contiguous()
            ascending = ascending_rows(ref_scores)
            for (source, users), chunks in zip(sources, parts, strict=True):
                rows = min(batch.numel(), users.numel() - start)
                if rows <= 0:
                    continue
                chunks.append(
                    _source_candidates(
                        source, batch[:rows], ref_scores[:rows], ascending[:rows], n_abs, eps,
                        source_filters,
                    )
                )  # fmt: skip
    return [ReplayCandidates(chunks) for chunks in parts]


def _source_candidates(
    source: Scorer,
    batch: Tensor,
    ref_scores: Tensor,
    ascending: Tensor,
    n_abs: int,
    eps: float,
    source_filters: Sequence[CSR | None],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One chunk of ``ReplayCandidates`` for one source, given the reference's rows sorted."""
    scores = source(batch).float()
    for csr in source_filters:
        fill_rows_(scores, batch, csr)
    top_scores, candidates = torch.topk(scores, min(n_abs, scores.shape[1]), dim=1)
    ref_rank = ranks_in_sorted(ref_scores, ascending, candidates)  # rank_W among all I_W
    own_rank = torch.arange(candidates.shape[1], device=candidates.device).unsqueeze(0)
    log_w = eps * (ref_rank - own_rank).double()
    return batch, candidates, torch.sigmoid(top_scores), log_w


def draw_replay(
    candidates: ReplayCandidates, n_samples: int, generator: torch.Generator | None = None
) -> ReplaySet:
    """``n_samples`` items per user drawn from ``candidates`` (without replacement)."""
    if n_samples <= 0:
        return ReplaySet.empty(_chunks_device(candidates))
    parts = []
    for users, items, labels, log_w in candidates.chunks:
        pick, valid = sample_without_replacement(log_w, n_samples, generator)
        rows = users.unsqueeze(1).expand_as(pick)[valid]
        parts.append(ReplaySet(rows, items.gather(1, pick)[valid], labels.gather(1, pick)[valid]))
    return pool_max(parts, _chunks_device(candidates))


def _chunks_device(candidates: ReplayCandidates) -> torch.device | None:
    return candidates.chunks[0][0].device if candidates.chunks else None


def pool_max(sets: Sequence[ReplaySet], device: torch.device | None = None) -> ReplaySet:
    """Union of replay sets; a (user, item) drawn more than once keeps its max label. With no
    set given, the empty set is on ``device`` (default: torch's default device)."""
    device = sets[0].users.device if sets else device
    sets = [s for s in sets if len(s)]
    if not sets:
        return ReplaySet.empty(device)
    users = torch.cat([s.users for s in sets])
    items = torch.cat([s.items for s in sets])
    labels = torch.cat([s.labels.float() for s in sets])
    stride = int(items.max()) + 1
    keys, inverse = torch.unique(users * stride + items, return_inverse=True)
    best = torch.full((keys.numel(),), -torch.inf, device=labels.device).scatter_reduce(
        0, inverse, labels, reduce="amax", include_self=True
    )
    return ReplaySet(keys // stride, keys % stride, best)


def replay_batches(
    replay: ReplaySet, batch_size: int, generator: torch.Generator | None = None
) -> list[ReplaySet]:
    """The replay set shuffled and cut into batches of ``batch_size`` (the last may be short)."""
    order = randperm(len(replay), generator, replay.users.device)
    return [
        ReplaySet(replay.users[idx], replay.items[idx], replay.labels[idx])
        for idx in order.split(batch_size)
    ]
