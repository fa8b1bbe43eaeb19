"""End-to-end CCD (and the distilled baselines) on a small synthetic low-rank stream."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
import torch

from experiments.distilled_baselines import FrozenStudentLearner, TeacherFineTuneLearner
from models.api import BlockData, Interactions
from models.ccd import CCDConfig, CCDLearner
from models.ccd.learner import distill_block
from models.ccd.stage3_teacher import (
    ContinualLoss,
    OldStructure,
    TeacherContext,
    TeacherWindow,
    ensemble_scorer,
    ials_params,
    similarity_graph,
    train_base_member,
    update_member,
)
from models.data import user_item_lists
from models.members import build_member
from models.metrics import ranking_metrics, union_pairs
from tests.models.helpers import N_BLOCKS, held_out_recall, synthetic_stream
from tests.models.test_ensemble import direct_rank_ensemble

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides) -> CCDConfig:
    settings = dict(
        base_epochs=6,
        kd_epochs=4,
        student_epochs=4,
        teacher_epochs=2,
        kd_uninteresting_items=50,
        kd_uninteresting_users=50,
    )
    return CCDConfig.preset("stream", **(settings | overrides))


@pytest.fixture(scope="module")
def stream() -> list[BlockData]:
    return synthetic_stream()


@pytest.fixture(scope="module")
def ccd_run(stream):
    learner = CCDLearner(tiny_config())
    reports, recalls = [], []
    for block in stream:
        reports.append(learner.learn_block(block))
        recalls.append(held_out_recall(learner.student(), block))
    return learner, reports, recalls


def test_ccd_student_is_trained_and_beats_random(ccd_run, stream) -> None:
    learner, reports, recalls = ccd_run
    for block, recall in zip(stream, recalls, strict=True):
        random_recall = 20 / block.n_items
        assert recall > 2 * random_recall, (block.index, recall)
    emb = learner.student()
    assert emb.users.shape == (stream[-1].n_users, 16) and emb.items.shape[0] == stream[-1].n_items
    assert set(reports[0].stage_seconds) == {"base_teachers", "distill"}
    for report in reports[1:]:
        assert {"student_update", "teacher_update", "distill"} <= set(report.stage_seconds)
        assert all(seconds >= 0 for seconds in report.stage_seconds.values())
        assert report.info["teacher_updated"] and report.info["student_replay_size"] > 0
    # The proxies have been EMA-blended once (block 2) and cover the old ids only.
    assert learner.proxies_blended and learner.stability is not learner.plasticity
    assert learner.stability.n_users == stream[1].n_users


def test_ccd_exposes_teacher_and_distilled_student(ccd_run, stream) -> None:
    learner, _, _ = ccd_run
    last = stream[-1]
    teacher = learner.teacher_scorer()
    assert (teacher.n_users, teacher.n_items) == (last.n_users, last.n_items)
    t_recall = ranking_metrics(teacher, last.test, [last.train, last.valid], (20,))["recall@20"]
    assert t_recall > 2 * 20 / last.n_items
    distilled = learner.distilled_student()
    assert distilled.users.shape[0] == last.n_users
    assert learner.teacher_updates == N_BLOCKS - 1


def test_teacher_every_two_skips_odd_blocks_and_checkpoints(stream) -> None:
    learner = CCDLearner(tiny_config(teacher_every=2))
    learner.learn_block(stream[0])
    before = [m.state_dict()["user_table.weight"].clone() for m in learner.teachers]
    distilled_before = learner.distilled
    report = learner.learn_block(stream[1])
    assert report.info["teacher_updated"] is False
    assert "teacher_update" not in report.stage_seconds and "distill" not in report.stage_seconds
    for member, weight in zip(learner.teachers, before, strict=True):
        assert torch.equal(member.user_table.weight, weight)  # untouched, not even grown
    assert learner.distilled is distilled_before and learner.teacher_updates == 0
    assert held_out_recall(learner.student(), stream[1]) > 2 * 20 / stream[1].n_items

    # Checkpoint round trip through torch.save / weights_only load.
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    restored = CCDLearner()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.config == learner.config
    assert torch.equal(restored.student().users, learner.student().users)
    assert restored.blocks_seen == 2 and len(restored.pending) == 1

    report = restored.learn_block(stream[2])  # block 2: teacher update on blocks 1 + 2
    assert report.info["teacher_updated"] is True
    assert restored.teacher_updates == 1
    assert restored.teachers[0].n_users == stream[2].n_users
    assert len(restored.teacher_window.block.train) > len(stream[2].train)  # the 2-block window
    assert held_out_recall(restored.student(), stream[2]) > 2 * 20 / stream[2].n_items


def test_distilled_baselines(stream) -> None:
    frozen = FrozenStudentLearner(tiny_config())
    frozen.learn_block(stream[0])
    d0 = frozen.student()
    report = frozen.learn_block(stream[1])
    assert report.info["frozen"] and torch.equal(frozen.student().users, d0.users)
    assert d0.users.shape[0] == stream[0].n_users

    ft = TeacherFineTuneLearner(tiny_config())
    ft.learn_block(stream[0])
    report = ft.learn_block(stream[1])
    assert report.info["teacher_updated"] and "teacher_update" in report.stage_seconds
    assert ft.student().users.shape[0] == stream[1].n_users
    assert held_out_recall(ft.student(), stream[1]) > 2 * 20 / stream[1].n_items
    restored = TeacherFineTuneLearner()
    restored.load_state_dict(ft.state_dict())
    assert torch.equal(restored.student().items, ft.student().items)
    # Teachers only (the replay's ft method when teacher_ft is not run): no distillation.
    ft.distills = False
    before = ft.student().items
    report = ft.learn_block(stream[2])
    assert "distill" not in report.stage_seconds and torch.equal(ft.student().items, before)
    assert ft.teachers[0].n_items == stream[2].n_items


def test_similarity_graph_bisects_the_threshold() -> None:
    # Rows: r0 = {0, 1}, r1 = {0, 1}, r2 = {1, 2}, r3 = {3}; cos(r0, r1) = 1, cos(r0|r1, r2) = 0.5.
    csr = user_item_lists(
        Interactions(torch.tensor([0, 0, 1, 1, 2, 2, 3]), torch.tensor([0, 1, 0, 1, 1, 2, 3])), 4
    )

    def neighbours(graph):
        indptr, indices = graph
        return [sorted(indices[indptr[r] : indptr[r + 1]].tolist()) for r in range(4)]

    # Target degree 1: the first threshold (0.5) keeps r0-r1 only, degree 0.5, within 0.6.
    assert neighbours(similarity_graph(csr, 4, target_degree=1.0)) == [[1], [0], [], []]
    # Target 1.5: 0.5 is too strict, the next threshold (0.3) keeps all three pairs.
    assert neighbours(similarity_graph(csr, 4, target_degree=1.5)) == [[1, 2], [0, 2], [0, 1], []]


def test_continual_loss_ui_iu_terms_against_formula() -> None:
    """MF member, old users {0, 2}, old items {1, 3}, previous train (0,1) (2,1) (2,3)."""
    member = build_member("mf", 3, 4, 2, seed=0)
    prev_train = Interactions(torch.tensor([0, 2, 2]), torch.tensor([1, 1, 3]))
    empty = user_item_lists(Interactions.empty(), 2)
    old = OldStructure(
        users=torch.tensor([0, 2]),
        items=torch.tensor([1, 3]),
        user_pos=torch.tensor([0, -1, 1]),
        item_pos=torch.tensor([-1, 0, -1, 1]),
        ratings=user_item_lists(Interactions(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])), 2),
        ratings_t=user_item_lists(
            Interactions(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])), 2
        ),
        uu=empty,
        ii=empty,
    )
    window = BlockData(1, 3, 4, prev_train)
    ctx = TeacherContext(TeacherWindow.of(window), old, None, [], None)
    cfg = CCDConfig(piw=False, cluster_weight=0.0, lwc_weight=1.0, n_clusters=2)
    loss_fn = ContinualLoss(member, ctx, cfg, torch.Generator().manual_seed(0))
    loss_fn.init_centers()
    got = loss_fn(torch.tensor([0, 1, 2]), torch.tensor([1, 2]))
    users, items = member.user_table.weight.detach(), member.item_table.weight.detach()
    log_p = torch.log_softmax(users[[0, 2]] @ items[[1, 3]].T / 5.0, dim=1)
    ui = (log_p[0, 0] + log_p[1].mean()) / 2  # u0 -> item 1; u2 -> items 1, 3
    log_q = torch.log_softmax(items[[1]] @ users[[0, 2]].T / 5.0, dim=1)
    iu = log_q[0].mean()  # item 1 -> users 0, 2
    assert got.item() == pytest.approx(-(ui + iu).item(), rel=1e-5)
    shared = loss_fn(torch.tensor([0, 1, 2]), torch.tensor([1, 2]), member.layer_embeddings())
    assert shared.item() == pytest.approx(got.item(), rel=1e-6)
    got.backward()
    assert member.user_table.weight.grad is not None
    # lwc_scale="batch": the same terms per BPR pair of the batch (3 users here).
    per_pair = ContinualLoss(member, ctx, replace(cfg, lwc_scale="batch"), torch.Generator())
    per_pair.init_centers()
    scaled = per_pair(torch.tensor([0, 1, 2]), torch.tensor([1, 2]))
    assert scaled.item() == pytest.approx(3 * got.item(), rel=1e-5)


def test_teacher_ensemble_of_members_is_the_rank_ensemble_formula() -> None:
    """teacher_update's ensemble of members (eval mode, first n_items) against the formula."""
    g = torch.Generator().manual_seed(0)
    train = Interactions(
        torch.randint(0, 30, (200,), generator=g), torch.randint(0, 25, (200,), generator=g)
    )
    members = [build_member(k, 30, 25, 4, seed=i) for i, k in enumerate(("lightgcn", "mf"))]
    for member in members:
        member.set_graph(train)
    with torch.no_grad():
        members[1].item_table.weight[3] = members[1].item_table.weight[7]  # tied scores
    teacher = ensemble_scorer(members, 20, power=0.05)
    users = torch.arange(30)
    with torch.no_grad():
        member_scores = [m.full_scores(users)[:, :20] for m in members]
    assert (teacher.n_users, teacher.n_items) == (30, 20)
    expected = direct_rank_ensemble(member_scores, 0.05)
    assert torch.allclose(teacher(users), expected, rtol=0, atol=2e-7)


def test_vae_teacher_members_run(stream) -> None:
    cfg = tiny_config(teacher_kinds=("mf", "vae"), vae_item_capacity=stream[-1].n_items)
    learner = CCDLearner(cfg)
    learner.learn_block(stream[0])
    report = learner.learn_block(stream[1])
    vae_score = report.info["teacher_valid_recall@20"]["vae_1"]
    assert report.info["teacher_updated"] and 0.0 <= vae_score <= 1.0
    assert learner.teachers[1].n_users == stream[1].n_users
    assert learner.teacher_scorer()(torch.arange(3)).shape == (3, stream[1].n_items)


def test_code_quirk_settings_run(stream) -> None:
    """Every §8 switch set to the official code's behaviour (plus the live replay reference)."""
    cfg = tiny_config(
        teacher_kinds=("lightgcn",),
        kd_nan_topk_quirk=True,
        init_fill_quirk=True,
        lwc_position_index_quirk=True,
        piw_per_user=False,
        student_replay_reference="live",
        entity_init="one_hop",
        eval_every=1,
    )
    learner = CCDLearner(cfg)
    for block in stream[:2]:
        report = learner.learn_block(block)
    assert report.info["teacher_updated"] and report.info["student_replay_size"] > 0
    assert held_out_recall(learner.student(), stream[1]) > 2 * 20 / stream[1].n_items


# -- the "best" variant: iALS teachers and the switches of ccd-method.md §9 --------------------
def test_replay_redraw_schedules() -> None:
    code = CCDConfig(eval_every=5)
    assert [e for e in range(12) if code.replay_redraw_due(e)] == [6, 11]
    every = CCDConfig(eval_every=5, replay_redraw="epoch")
    assert [e for e in range(4) if every.replay_redraw_due(e)] == [1, 2, 3]


def test_history_graph_and_distillation_data_follow_their_switches() -> None:
    blocks = synthetic_stream()
    history = union_pairs([b.train for b in blocks], blocks[-1].n_items)
    ctx = TeacherContext(TeacherWindow.of(blocks[-1]), None, None, [], None, history)
    assert ctx.graph(CCDConfig()) is blocks[-1].train
    assert ctx.graph(CCDConfig(teacher_graph="all")) is history
    assert distill_block(blocks[-1], history, CCDConfig()) is blocks[-1]
    assert distill_block(blocks[-1], history, CCDConfig(distill_data="all")).train is history
    keys = history.users * blocks[-1].n_items + history.items
    assert torch.equal(keys, torch.unique(keys))  # distinct pairs


def test_ials_member_stage3_refits_on_every_pair_so_far() -> None:
    blocks = synthetic_stream()
    cfg = tiny_config(teacher_kinds=("ials",), teacher_dim=8, ials_iterations=4)
    member = build_member("ials", blocks[0].n_users, blocks[0].n_items, 8)
    train_base_member(member, blocks[0], cfg, seed=1)
    history = union_pairs([b.train for b in blocks[:2]], blocks[1].n_items)
    ctx = TeacherContext(TeacherWindow.of(blocks[1]), None, None, [], None, history)
    update_member(member, ctx, cfg, seed=5)
    expected = build_member("ials", 1, 1, 8)
    expected.fit(history, blocks[1].n_users, blocks[1].n_items, ials_params(cfg), seed=5)
    assert torch.equal(member.user_table.weight, expected.user_table.weight)
    # teacher_ft: warm-started sweeps on the window only, grown to the window's sizes.
    before = member.item_table.weight.detach().clone()
    ctx = TeacherContext(TeacherWindow.of(blocks[2]), None, None, [], None, None)
    update_member(member, ctx, cfg, seed=5, continual=False)
    assert member.n_items == blocks[2].n_items and member.n_users == blocks[2].n_users
    assert not torch.equal(member.item_table.weight[: before.shape[0]], before)


def test_best_variant_learns_the_stream_and_round_trips() -> None:
    blocks = synthetic_stream()
    cfg = CCDConfig.preset(
        "stream", "best", teacher_dim=8, ials_iterations=4, ials_replay_weight=0.5,
        kd_epochs=4, student_epochs=3, kd_uninteresting_items=50, kd_uninteresting_users=50,
    )  # fmt: skip
    learner = CCDLearner(cfg)
    for block in blocks:
        learner.learn_block(block)
    assert all(m.kind == "ials" for m in learner.teachers)
    assert len(learner.history) == len(union_pairs([b.train for b in blocks], blocks[-1].n_items))
    assert held_out_recall(learner.student(), blocks[-1]) > 0.1
    clone = CCDLearner()
    clone.load_state_dict(learner.state_dict())
    assert torch.equal(clone.history.items, learner.history.items)
    assert torch.equal(clone.student().users, learner.student().users)
