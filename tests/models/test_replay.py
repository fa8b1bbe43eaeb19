"""Proxy-guided replay: ranks, the without-replacement sampler, the sampler's distribution."""

from __future__ import annotations

import math

import pytest
import torch

from models.api import Interactions
from models.data import user_item_lists
from models.replay import (
    ReplaySet,
    column_ranks,
    descending_order,
    draw_replay,
    fill_rows_,
    pool_max,
    rank_matrix,
    replay_batches,
    replay_candidates,
    sample_replay,
    sample_without_replacement,
    shared_replay_candidates,
)


def test_rank_matrix() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]])
    assert rank_matrix(scores).tolist() == [[2, 0, 1], [0, 2, 1]]


def test_fill_rows_uses_the_csr_and_ignores_out_of_range_items() -> None:
    csr = user_item_lists(Interactions(torch.tensor([0, 1, 1]), torch.tensor([2, 0, 5])), 2)
    scores = torch.zeros(2, 3)
    fill_rows_(scores, torch.tensor([1, 0]), csr, -7.0)
    assert scores.tolist() == [[-7.0, 0.0, 0.0], [0.0, 0.0, -7.0]]


def test_without_replacement_first_draw_and_inclusion_probabilities() -> None:
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n_rows = 40_000
    log_w = weights.log().expand(n_rows, 4)
    gen = torch.Generator().manual_seed(0)
    picks, valid = sample_without_replacement(log_w, 2, gen)
    assert valid.all()
    assert (picks[:, 0] != picks[:, 1]).all()  # no repeats within a row
    first = torch.bincount(picks[:, 0], minlength=4).float() / n_rows
    assert torch.allclose(first, weights, atol=0.01)
    # P(i in a 2-draw sample) = p_i + sum_{j != i} p_j p_i / (1 - p_j).
    p = weights.tolist()
    inclusion = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    got = torch.bincount(picks.flatten(), minlength=4).float() / n_rows
    assert torch.allclose(got, torch.tensor(inclusion), atol=0.01)


def test_without_replacement_rows_short_of_candidates() -> None:
    log_w = torch.tensor([[0.0, -math.inf, -math.inf], [0.0, 0.0, 0.0]])
    picks, valid = sample_without_replacement(log_w, 2, torch.Generator().manual_seed(1))
    assert valid.tolist() == [[True, False], [True, True]]
    assert picks[0, 0] == 0


def test_sample_replay_matches_the_formula() -> None:
    """p(i|u) ∝ exp(eps (rank_W - rank_X)) on X's top-N_abs after filtering; label sigmoid(X)."""
    n_users, eps, n_abs = 20_000, 0.5, 3
    x_row = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])  # X ranks items 0,1,2,3,...
    w_row = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # W ranks them in reverse
    source = lambda users: x_row.expand(users.numel(), -1).clone()  # noqa: E731
    reference = lambda users: w_row.expand(users.numel(), -1).clone()  # noqa: E731
    # Every user already interacted with item 1: it is filtered out of X's list.
    seen = Interactions(torch.arange(n_users), torch.ones(n_users, dtype=torch.long))
    csr = user_item_lists(seen, n_users)
    out = sample_replay(
        source,
        reference,
        torch.arange(n_users),
        1,
        n_abs,
        eps,
        [csr],
        torch.Generator().manual_seed(2),
        chunk=4096,
    )
    assert len(out) == n_users
    # After filtering, X's top-3 are items 0, 2, 3 with rank_X 0, 1, 2; rank_W = 5, 3, 2.
    logits = torch.tensor([eps * (5 - 0), eps * (3 - 1), eps * (2 - 2)])
    want = torch.softmax(logits, 0)
    freq = torch.bincount(out.items, minlength=6).float() / n_users
    assert freq[[1, 4, 5]].sum() == 0
    assert torch.allclose(freq[[0, 2, 3]], want, atol=0.012)
    assert torch.allclose(out.labels[out.items == 2], torch.sigmoid(torch.tensor(3.0)))


def test_sample_replay_several_per_user_without_repeats() -> None:
    scores = torch.arange(10.0).flip(0)
    source = lambda users: scores.expand(users.numel(), -1).clone()  # noqa: E731
    out = sample_replay(source, source, torch.arange(50), 3, 5, 1e-4, (), None)
    assert len(out) == 150
    assert (out.items < 5).all()
    pairs = out.users * 10 + out.items
    assert pairs.unique().numel() == 150


def test_redraws_from_cached_candidates_equal_fresh_samples() -> None:
    """Stage 2 computes the candidates once and re-draws from them: the same sets as
    ``sample_replay`` from the same generator state, draw after draw."""
    g = torch.Generator().manual_seed(0)
    x_table, w_table = torch.randn(70, 40, generator=g), torch.randn(70, 40, generator=g)
    source = lambda users: x_table[users]  # noqa: E731
    reference = lambda users: w_table[users]  # noqa: E731
    filters = [user_item_lists(Interactions(torch.arange(70), torch.arange(70) % 40), 70)]
    users = torch.arange(70)
    cached = replay_candidates(source, reference, users, 10, 0.5, filters, chunk=16)
    assert len(cached.chunks) == 5  # chunks of 16 users
    fresh_gen, cached_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(3):
        fresh = sample_replay(source, reference, users, 3, 10, 0.5, filters, fresh_gen, 16)
        again = draw_replay(cached, 3, cached_gen)
        assert len(fresh) == 210
        for name in ("users", "items", "labels"):
            assert torch.equal(getattr(fresh, name), getattr(again, name))


def test_pool_max_and_batches() -> None:
    a = ReplaySet(torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([0.2, 0.9]))
    b = ReplaySet(torch.tensor([0, 2]), torch.tensor([3, 4]), torch.tensor([0.7, 0.1]))
    pooled = pool_max([a, b, ReplaySet.empty()])
    got = sorted(
        zip(pooled.users.tolist(), pooled.items.tolist(), pooled.labels.tolist(), strict=True)
    )
    assert [(u, i) for u, i, _ in got] == [(0, 3), (1, 4), (2, 4)]
    assert [round(v, 6) for _, _, v in got] == [0.7, 0.9, 0.1]
    batches = replay_batches(pooled, 2, torch.Generator().manual_seed(0))
    assert [len(x) for x in batches] == [2, 1]
    assert len(pool_max([])) == 0


@pytest.mark.parametrize("n_samples", [0])
def test_sample_replay_nothing_to_draw(n_samples: int) -> None:
    src = lambda users: torch.zeros(users.numel(), 4)  # noqa: E731
    assert len(sample_replay(src, src, torch.arange(3), n_samples, 2, 1e-4)) == 0


def stable_descending(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def test_descending_order_and_column_ranks_equal_a_stable_sort() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 300, generator=g).round(decimals=1)  # many ties
    scores[0, :4] = torch.tensor([0.0, -0.0, -math.inf, math.inf])
    scores[1] = 1e-40  # one tie group of subnormals
    order = stable_descending(scores)
    assert torch.equal(descending_order(scores), order)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(300).expand_as(order))
    assert torch.equal(rank_matrix(scores), ranks)
    columns = torch.randint(0, 300, (6, 40), generator=g)
    columns[0, :4] = torch.arange(4)
    assert torch.equal(column_ranks(scores, columns), ranks.gather(1, columns))


def test_shared_candidates_equal_one_call_per_source() -> None:
    """Two sources with different user counts against one reference, sorted once per chunk:
    the same candidates as one ``replay_candidates`` call each."""
    g = torch.Generator().manual_seed(1)
    w_table = torch.randn(50, 30, generator=g)
    tables = [torch.randn(50, 30, generator=g), torch.randn(37, 30, generator=g)]
    sources = [(lambda users, t=t: t[users], torch.arange(t.shape[0])) for t in tables]
    reference = lambda users: w_table[users]  # noqa: E731
    shared = shared_replay_candidates(sources, reference, 8, 0.5, (), chunk=16)
    for (source, users), together in zip(sources, shared, strict=True):
        alone = replay_candidates(source, reference, users, 8, 0.5, (), chunk=16)
        assert len(alone.chunks) == len(together.chunks)
        for a, b in zip(alone.chunks, together.chunks, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="prefix"):
        shared_replay_candidates([(sources[0][0], torch.arange(5, 9))] + sources, reference, 8, 0.5)
