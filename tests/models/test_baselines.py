"""FineTuneLearner on a small synthetic low-rank stream."""

from __future__ import annotations

import io
import time

import pytest
import torch

from models.api import BlockData, Embeddings
from models.baselines import FineTuneLearner
from models.data import split_block
from models.members import build_member
from tests.models.helpers import held_out_recall

N_USERS, N_ITEMS, PER_USER = 500, 350, 10


def low_rank_stream() -> list[BlockData]:
    """Block 0: users < 400 on items < 300; block 1 adds users 400.. and items 300..

    Each user picks PER_USER distinct items from softmax(2 · p_u · q_i) of rank-4 factors.
    """
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(N_USERS, 4, generator=g), torch.randn(N_ITEMS, 4, generator=g)
    blocks = []
    for index, (users, n_items) in enumerate([(range(0, 400), 300), (range(200, 500), 350)]):
        users = torch.tensor(list(users))
        probs = torch.softmax(2 * p[users] @ q[:n_items].T, dim=1)
        items = torch.multinomial(probs, PER_USER, generator=g).flatten()
        blocks.append(
            split_block(
                users.repeat_interleave(PER_USER),
                items,
                int(users.max()) + 1,
                n_items,
                index,
                seed=index,
            )
        )
    return blocks


def random_recall(block: BlockData, dim: int = 16) -> float:
    g = torch.Generator().manual_seed(123)
    emb = Embeddings(
        torch.randn(block.n_users, dim, generator=g), torch.randn(block.n_items, dim, generator=g)
    )
    return held_out_recall(emb, block)


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_fine_tune_beats_random_and_grows(kind: str) -> None:
    blocks = low_rank_stream()
    learner = FineTuneLearner(dim=16, kind=kind, epochs=30, lr=1e-2, eval_every=5, patience=2)
    report = learner.learn_block(blocks[0])
    assert report.info["best_epoch"] >= 0 and report.stage_seconds["fine_tune"] > 0
    recall, baseline = held_out_recall(learner.student(), blocks[0]), random_recall(blocks[0])
    assert recall > 0.2 and recall > 3 * baseline
    learner.learn_block(blocks[1])
    student = learner.student()
    assert student.users.shape == (500, 16) and student.items.shape == (350, 16)
    recall, baseline = held_out_recall(student, blocks[1]), random_recall(blocks[1])
    assert recall > 0.2 and recall > 3 * baseline


def test_state_dict_round_trip_and_resume() -> None:
    blocks = low_rank_stream()
    learner = FineTuneLearner(dim=8, kind="lightgcn", epochs=4, eval_every=2, patience=2, seed=3)
    learner.learn_block(blocks[0])
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    restored = FineTuneLearner()
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.config == learner.config and restored.blocks_seen == 1
    assert torch.equal(restored.student().users, learner.student().users)  # graph restored too
    learner.learn_block(blocks[1])
    restored.learn_block(blocks[1])
    assert torch.equal(restored.student().items, learner.student().items)


def test_block_without_valid_trains_all_epochs_and_validates_arguments() -> None:
    block = low_rank_stream()[0]
    block.valid = type(block.valid).empty()
    learner = FineTuneLearner(dim=4, epochs=3)
    report = learner.learn_block(block)
    assert report.info["epochs_run"] == 3 and report.info["best_valid_recall@20"] is None
    with pytest.raises(ValueError):
        FineTuneLearner(kind="vae")
    with pytest.raises(RuntimeError):
        FineTuneLearner().student()


def test_five_thousand_events_train_in_seconds() -> None:
    g = torch.Generator().manual_seed(1)
    users = torch.arange(1000).repeat_interleave(5)  # 5,000 events, 1,000 users, 3,000 items
    items = torch.randint(0, 3000, (5000,), generator=g)
    block = split_block(users, items, 1000, 3000, 0, seed=0)
    assert len(block.train) == 3000
    learner = FineTuneLearner(dim=16, kind="lightgcn", epochs=10, eval_every=1, patience=100)
    started = time.perf_counter()
    report = learner.learn_block(block)
    assert report.info["epochs_run"] == 10
    assert time.perf_counter() - started < 20.0  # ~1 s on one free core; generous for shared CI


def test_continue_from_fine_tunes_the_given_member_and_refuses_another_kind() -> None:
    block = split_block(torch.arange(60).repeat(3), torch.randint(0, 40, (180,)), 60, 40, 1, 0)
    member = build_member("mf", 60, 40, 8, seed=0)
    before = member.user_table.weight.detach().clone()
    learner = FineTuneLearner(dim=8, kind="mf", epochs=2)
    learner.continue_from(member, blocks_seen=1)
    learner.learn_block(block)
    assert learner.member is member and learner.blocks_seen == 2
    assert not torch.equal(member.user_table.weight, before)  # trained in place
    with pytest.raises(ValueError, match="cannot continue"):
        FineTuneLearner(kind="lightgcn").continue_from(member, blocks_seen=1)
