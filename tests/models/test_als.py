"""iALS: the member kind (models/members/ials.py) and the retrain-from-scratch learner
(models/als.py), on the low-rank synthetic stream of test_baselines."""

from __future__ import annotations

import pytest
import torch

from models.als import ALSLearner, tune_ials
from models.api import Interactions
from models.members import IALS, IALSParams, build_member
from models.members.ials import confidence_matrix
from models.metrics import embedding_scorer, ranking_metrics
from tests.models.test_baselines import low_rank_stream

FAST = IALSParams(regularization=1.0, alpha=16.0, iterations=8)


def test_confidence_matrix_keeps_the_largest_weight_of_a_repeated_pair() -> None:
    inter = Interactions(torch.tensor([0, 0, 1, 0]), torch.tensor([2, 2, 0, 1]))
    matrix = confidence_matrix(inter, 2, 3, torch.tensor([0.5, 0.9, 1.0, 0.2]))
    assert matrix.shape == (2, 3) and matrix.nnz == 3
    assert matrix[0, 2] == pytest.approx(0.9) and matrix[0, 1] == pytest.approx(0.2)


def test_ials_fit_beats_a_random_model_and_is_seeded() -> None:
    block = low_rank_stream()[0]
    fitted = IALS(block.n_users, block.n_items, 8, seed=0)
    fitted.fit(block.train, block.n_users, block.n_items, FAST, seed=3)
    again = IALS(block.n_users, block.n_items, 8, seed=0)
    again.fit(block.train, block.n_users, block.n_items, FAST, seed=3)
    assert torch.equal(fitted.user_table.weight, again.user_table.weight)
    random = build_member("mf", block.n_users, block.n_items, 8)

    def recall(member) -> float:
        scorer = embedding_scorer(member.export())
        return ranking_metrics(scorer, block.test, [block.train, block.valid], (20,))["recall@20"]

    assert recall(fitted) > 2 * recall(random)
    assert fitted.user_table.weight.requires_grad  # BPR fine-tuning (teacher_ft) can train it


def test_warm_start_continues_from_the_current_factors() -> None:
    block = low_rank_stream()[0]
    member = IALS(block.n_users, block.n_items, 8)
    member.fit(block.train, block.n_users, block.n_items, FAST)
    before = member.item_table.weight.detach().clone()
    one_sweep = IALSParams(FAST.regularization, FAST.alpha, iterations=1)
    warm = IALS(block.n_users, block.n_items, 8)
    warm.load_state_dict(member.state_dict())
    warm.fit(block.train, block.n_users, block.n_items, one_sweep, warm_start=True)
    cold = IALS(block.n_users, block.n_items, 8)
    cold.fit(block.train, block.n_users, block.n_items, one_sweep)
    # One sweep from the converged factors stays near them; one from scratch does not.
    assert (warm.item_table.weight - before).norm() < 0.5 * (cold.item_table.weight - before).norm()
    with pytest.raises(ValueError, match="grown"):
        warm.fit(block.train, block.n_users + 1, block.n_items, one_sweep, warm_start=True)


def test_tune_picks_the_best_valid_point() -> None:
    block = low_rank_stream()[0]
    params, scores = tune_ials(block, 4, regularizations=(1.0, 1e4), alphas=(16.0,), iterations=4)
    assert set(scores) == {"reg=1,alpha=16", "reg=10000,alpha=16"}
    assert params.regularization == 1.0 and scores["reg=1,alpha=16"] > scores["reg=10000,alpha=16"]


def test_als_learner_refits_on_all_data_so_far_and_round_trips() -> None:
    blocks = low_rank_stream()
    learner = ALSLearner(dim=8, params=FAST)
    reports = [learner.learn_block(block) for block in blocks]
    distinct = torch.unique(
        torch.cat([b.train.users * 1000 + b.train.items for b in blocks])
    ).numel()
    assert reports[-1].info["pairs"] == distinct  # a pair learnt twice is kept once
    assert learner.member is not None
    matrix = confidence_matrix(learner.history, blocks[1].n_users, blocks[1].n_items)
    assert matrix.nnz == distinct
    student = learner.student()
    assert tuple(student.users.shape) == (blocks[1].n_users, 8)
    copy = ALSLearner()
    copy.load_state_dict(learner.state_dict())
    assert torch.equal(copy.student().items, student.items)
    # The restored history is there: learning block 1 again adds no distinct pair to it.
    assert copy.learn_block(blocks[1]).info["pairs"] == reports[1].info["pairs"]
    assert reports[1].info["pairs"] > len(blocks[1].train)


def test_als_learner_tunes_on_the_first_validation_split() -> None:
    learner = ALSLearner(dim=4)
    report = learner.learn_block(low_rank_stream()[0])
    assert learner.params is not None and "tuning_valid_recall@20" in report.info
