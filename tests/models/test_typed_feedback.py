"""Typed, weighted feedback moves every streaming learner the way its weights say: purchases
(weight 4) pull their items up, dislikes (explicit negatives) push theirs down, against the
same stream with plain, untyped events."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models.als import ALSLearner
from models.api import BlockData, BlockLearner, Interactions
from models.baselines import FineTuneLearner
from models.ccd import CCDConfig, CCDLearner
from models.data import split_block
from models.members import IALSParams

N_USERS, N_ITEMS, PER_USER, PURCHASED, DISLIKED = 120, 60, 10, 4.0, 2.0

LEARNERS: dict[str, Callable[[], BlockLearner]] = {
    "als": lambda: ALSLearner(dim=8, params=IALSParams(regularization=1.0, alpha=8.0)),
    "bpr": lambda: FineTuneLearner(dim=8, epochs=15, lr=0.01),
    "ccd": lambda: CCDLearner(
        CCDConfig.preset(
            "stream",
            "best",
            teacher_dim=8,
            ials_iterations=6,
            kd_epochs=10,
            kd_lr=0.01,
            student_epochs=10,
            student_lr=0.01,
            kd_uninteresting_items=30,
            kd_uninteresting_users=30,
        )
    ),  # fmt: skip
}


def stream(typed: bool, seed: int = 0) -> tuple[list[BlockData], Interactions, Interactions]:
    """Two blocks of random pairs. Typed: every pair of an even item is a purchase (weight 4)
    and each user dislikes two items they never interacted with. Returns the blocks, the
    purchased pairs and the disliked pairs (the same pairs whether typed or not)."""
    g = torch.Generator().manual_seed(seed)
    blocks, purchased, disliked = [], [], []
    for index in range(2):
        scores = torch.rand(N_USERS, N_ITEMS, generator=g)
        chosen = scores.topk(PER_USER + 2, dim=1).indices
        users = torch.arange(N_USERS).repeat_interleave(PER_USER)
        items = chosen[:, :PER_USER].flatten()
        weights = torch.where(items % 2 == 0, PURCHASED, 1.0) if typed else None
        block = split_block(users, items, N_USERS, N_ITEMS, index, seed + index, weights=weights)
        bad_users = torch.arange(N_USERS).repeat_interleave(2)
        bad_items = chosen[:, PER_USER:].flatten()
        if typed:
            block.negatives = Interactions(bad_users, bad_items, torch.full((2 * N_USERS,), 2.0))
        purchased.append(block.train.items % 2 == 0)
        disliked.append(Interactions(bad_users, bad_items))
        blocks.append(block)
    last = blocks[-1].train
    bought = Interactions(last.users[purchased[-1]], last.items[purchased[-1]])
    return blocks, bought, disliked[-1]


def pair_scores(learner: BlockLearner, pairs: Interactions) -> torch.Tensor:
    student = learner.student()
    return (student.users[pairs.users] * student.items[pairs.items]).sum(1)


def relative(learner: BlockLearner, pairs: Interactions) -> float:
    """Mean score of ``pairs`` minus the mean score of every (user, item): where they stand."""
    student = learner.student()
    return float(pair_scores(learner, pairs).mean() - (student.users @ student.items.T).mean())


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_purchases_pull_up_and_dislikes_push_down(name: str) -> None:
    torch.set_num_threads(1)
    runs = {}
    for typed in (False, True):
        blocks, bought, disliked = stream(typed)
        learner = LEARNERS[name]()
        for block in blocks:
            learner.learn_block(block)
        runs[typed] = (relative(learner, bought), relative(learner, disliked))
    (plain_bought, plain_disliked), (typed_bought, typed_disliked) = runs[False], runs[True]
    assert typed_bought > plain_bought, runs
    assert typed_disliked < plain_disliked, runs


def test_untyped_blocks_carry_no_weights_and_learn_as_before() -> None:
    blocks, _, _ = stream(typed=False)
    assert blocks[0].train.weights is None and len(blocks[0].negatives) == 0
