"""Stage 1: the teacher's interesting lists, the uninteresting sampler, and a small distillation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.api import BlockData, Embeddings, Interactions
from models.ccd import CCDConfig, stage1_distill
from models.ccd.stage1_distill import (
    blocked_pairs,
    distill,
    gathered_scores,
    rrd_loss,
    sample_uninteresting,
    sample_uninteresting_mask,
    teacher_lists,
    top_keys_mask,
)
from models.data import split_block, user_item_lists
from models.members import build_member
from models.metrics import embedding_scorer, ranking_metrics

pytestmark = pytest.mark.usefixtures("single_thread")


# Teacher scores (3 users x 5 items); train: u0 -> {0}, u1 -> {1, 2}.
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.1, 0.5, 0.3],
        [0.2, 0.95, 0.9, 0.4, 0.6],
        [0.1, 0.2, 0.3, 0.35, 0.5],
    ]
)
TRAIN = Interactions(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))


def teacher(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users]


def test_teacher_lists_exclude_train_pairs() -> None:
    lists = teacher_lists(teacher, 3, 5, user_item_lists(TRAIN, 3), k=2, chunk=2)
    assert lists.interesting_items.tolist() == [[1, 3], [4, 3], [4, 3]]
    # Per item, the 2 best users without a train pair, across user chunks of 2.
    assert lists.interesting_users.tolist() == [[1, 2], [0, 2], [2, 0], [0, 1], [1, 2]]
    assert torch.equal(lists.top_items, lists.interesting_items)


def test_teacher_lists_nan_quirk_puts_train_pairs_first() -> None:
    lists = teacher_lists(teacher, 3, 5, user_item_lists(TRAIN, 3), k=2, nan_quirk=True, chunk=2)
    items = lists.interesting_items.tolist()
    assert items[0] == [0, 1] and sorted(items[1]) == [1, 2] and items[2] == [4, 3]
    assert lists.interesting_users.tolist() == [[0, 1], [1, 0], [1, 2], [0, 1], [1, 2]]
    assert lists.top_items.tolist() == [[1, 3], [4, 3], [4, 3]]  # exclusion lists unchanged


def test_uninteresting_samples_avoid_blocked_pairs() -> None:
    lists = teacher_lists(teacher, 3, 5, user_item_lists(TRAIN, 3), k=2)
    exclusion = torch.tensor([[2, -1]])  # u0 must not get item 2 either
    by_user, by_item = blocked_pairs(3, 5, TRAIN, exclusion, lists)
    # u0 blocked: train 0, interesting 1 3, excluded 2, interesting user of item 1 (u0 for i1,
    # i2, i3) -> only item 4 is left.
    assert by_user[1][by_user[0][0] : by_user[0][1]].tolist() == [0, 1, 2, 3]
    samples = sample_uninteresting(3, 5, by_user, 3, torch.Generator().manual_seed(0))
    assert samples.dtype == torch.int32
    assert samples[0].tolist() == [4, -1, -1]
    # Item side: item 4's interesting users are 1, 2 -> only user 0 is left.
    item_samples = sample_uninteresting(5, 3, by_item, 2, torch.Generator().manual_seed(0))
    assert item_samples[4].tolist() == [0, -1]


def test_uninteresting_sampling_is_uniform_without_replacement() -> None:
    n_rows, n_cols = 4000, 6
    blocked = user_item_lists(
        Interactions(torch.arange(n_rows), torch.zeros(n_rows, dtype=torch.long)), n_rows
    )
    samples = sample_uninteresting(n_rows, n_cols, blocked, 2, torch.Generator().manual_seed(1))
    assert (samples >= 1).all()
    assert (samples[:, 0] != samples[:, 1]).all()
    freq = torch.bincount(samples.flatten().long(), minlength=n_cols)[1:].float() / samples.numel()
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.02)


def test_gathered_scores_both_paths() -> None:
    g = torch.Generator().manual_seed(3)
    anchors, table = torch.randn(2, 3, generator=g), torch.randn(40, 3, generator=g)
    small = torch.tensor([[1, 5], [0, 39]])
    want = torch.stack([table[small[b]] @ anchors[b] for b in range(2)])
    assert torch.allclose(gathered_scores(anchors, table, small), want, atol=1e-6)
    large = torch.randint(0, 40, (2, 20), generator=g)
    want = torch.stack([table[large[b]] @ anchors[b] for b in range(2)])
    assert torch.allclose(gathered_scores(anchors, table, large), want, atol=1e-6)


def low_rank_block(
    n_users: int = 150, n_items: int = 80, seed: int = 0
) -> tuple[BlockData, Embeddings]:
    g = torch.Generator().manual_seed(seed)
    users_f, items_f = torch.randn(n_users, 4, generator=g), torch.randn(n_items, 4, generator=g)
    picks = torch.multinomial(torch.softmax(2.0 * users_f @ items_f.T, 1), 10, generator=g)
    users = torch.arange(n_users).unsqueeze(1).expand_as(picks)
    block = split_block(users.flatten(), picks.flatten(), n_users, n_items, 0, seed)
    return block, Embeddings(users_f, items_f)


@pytest.mark.parametrize("user_rrd", ["per_batch", "per_epoch"])
def test_distilled_student_learns_the_teacher_ranking(user_rrd: str) -> None:
    block, truth = low_rank_block()
    cfg = CCDConfig.preset(
        "stream",
        kd_epochs=6,
        kd_uninteresting_items=40,
        kd_uninteresting_users=60,
        kd_user_rrd=user_rrd,
    )
    result = distill(embedding_scorer(truth), block, cfg, seed=0)
    assert result.lists.interesting_items.shape == (150, 40)
    assert result.lists.interesting_users.shape == (80, 40)
    assert result.student.n_users == 150 and result.student.n_items == 80
    got = ranking_metrics(
        embedding_scorer(result.student.export()), block.test, [block.train, block.valid], (20,)
    )
    random_recall = 20 / 80
    assert got["recall@20"] > random_recall + 0.2, got
    assert result.fit.best_epoch >= 0 and not math.isinf(result.fit.best_score)


@pytest.mark.parametrize("user_rrd", ["per_batch", "per_epoch"])
def test_user_side_rrd_rows_per_epoch(user_rrd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """per_batch: each BPR batch's unique users (a user once per batch holding one of its pairs);
    per_epoch: every user exactly once per epoch, also one without train pairs."""
    block, truth = low_rank_block()
    n_users, n_items = block.n_users + 5, block.n_items  # 5 users with no pairs at all
    block = dataclasses.replace(block, n_users=n_users)
    truth = Embeddings(torch.cat([truth.users, torch.randn(5, 4)]), truth.items)
    user_rows: list[torch.Tensor] = []
    real_rrd_loss = stage1_distill.rrd_loss

    def recording(anchors, table, interesting, uninteresting):
        if table.shape[0] == n_items:  # the user side: users ranked over items
            user_rows.append(anchors.detach().clone())
        return real_rrd_loss(anchors, table, interesting, uninteresting)

    monkeypatch.setattr(stage1_distill, "rrd_loss", recording)
    cfg = CCDConfig.preset(
        "stream",
        kd_epochs=1,
        kd_batch=256,
        kd_uninteresting_items=40,
        kd_uninteresting_users=60,
        kd_user_rrd=user_rrd,
    )
    distill(embedding_scorer(truth), block, cfg, seed=0)
    rows = sum(len(r) for r in user_rows)
    n_batches = math.ceil(len(block.train) / 256)
    if user_rrd == "per_epoch":
        assert rows == n_users and len(user_rows) == math.ceil(n_users / 256)
    else:
        assert len(user_rows) == n_batches
        active = block.train.users.unique().numel()
        assert active < rows <= n_batches * active  # users repeat across batches


def test_a_warm_started_distillation_grows_the_previous_student() -> None:
    block, truth = low_rank_block()
    cfg = CCDConfig.preset(
        "stream", kd_epochs=2, kd_lr=0.0, kd_uninteresting_items=40, kd_uninteresting_users=60
    )
    small = dataclasses.replace(block, n_users=100, n_items=60)
    previous = build_member("mf", small.n_users, small.n_items, cfg.student_dim, seed=3)
    result = distill(embedding_scorer(truth), block, cfg, seed=0, start=previous)
    assert (result.student.n_users, result.student.n_items) == (150, 80)
    # lr 0: the old rows are the previous student's, and the previous student is untouched.
    assert torch.equal(result.student.user_table.weight[:100], previous.user_table.weight)
    assert previous.n_users == 100
    fresh = distill(embedding_scorer(truth), block, cfg, seed=0)
    assert not torch.equal(fresh.student.user_table.weight[:100], previous.user_table.weight)


def test_mask_sampler_draws_the_sets_of_the_list_sampler() -> None:
    """Same generator state -> the mask holds exactly the sampled lists (rows short of
    unblocked columns included)."""
    n_rows, n_cols = 40, 30
    g = torch.Generator().manual_seed(5)
    pairs = Interactions(
        torch.randint(0, n_rows, (400,), generator=g), torch.randint(0, 30, (400,), generator=g)
    )
    blocked = user_item_lists(pairs, n_rows)
    lists = sample_uninteresting(n_rows, n_cols, blocked, 20, torch.Generator().manual_seed(2), 16)
    mask = sample_uninteresting_mask(
        n_rows, n_cols, blocked, 20, torch.Generator().manual_seed(2), 16
    )
    want = torch.zeros(n_rows, n_cols + 1, dtype=torch.bool)
    want.scatter_(1, torch.where(lists >= 0, lists.long(), n_cols), True)
    assert torch.equal(mask, want[:, :n_cols])
    assert (mask.sum(1) < 20).any()  # some rows had fewer than 20 unblocked columns


def test_top_keys_mask_breaks_ties_at_the_cut_like_topk() -> None:
    keys = torch.tensor([[0.5, 0.2, 0.5, -1.0, 0.1], [0.3, 0.3, 0.3, 0.3, -1.0]])
    mask = top_keys_mask(keys, 2)
    assert mask[0].tolist() == [True, False, True, False, False]
    assert mask[1].sum() == 2 and not mask[1, 4]  # 2 of the 4 tied keys, never the blocked one
    assert top_keys_mask(keys, 5).tolist() == (keys >= 0).tolist()


def test_rrd_loss_mask_path_equals_list_path() -> None:
    g = torch.Generator().manual_seed(4)
    anchors = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(25, 3, generator=g, dtype=torch.float64, requires_grad=True)
    interesting = torch.randint(0, 25, (6, 4), generator=g)
    lists = sample_uninteresting(6, 25, user_item_lists(Interactions.empty(), 6), 5, g)
    lists[0, 3:] = -1  # padding
    mask = torch.zeros(6, 26, dtype=torch.bool)
    mask.scatter_(1, torch.where(lists >= 0, lists.long(), 25), True)
    by_lists = rrd_loss(anchors, table, interesting, lists)
    by_mask = rrd_loss(anchors, table, interesting, mask[:, :25])
    assert by_mask.item() == pytest.approx(by_lists.item(), rel=1e-12)
    grads_lists = torch.autograd.grad(by_lists, (anchors, table))
    grads_mask = torch.autograd.grad(by_mask, (anchors, table))
    for a, b in zip(grads_mask, grads_lists, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
