"""Stage 2: continual update of the student on block k (ccd-method.md §3.4, ``S_update.py``).

Starting from the distilled student D_{k-1}: grow it to the block's new users/items with the
entity initialisation, then per epoch a BPR pass over D_k train (negatives avoid the user's
positives and the exclusion lists) and a replay pass over the proxy-guided replay set with soft
labels, weighted lambda_e = 0.5 exp(-e / 10). The result CL_k is the deployed student.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from models.api import BlockData, Interactions
from models.ccd.config import CCDConfig
from models.ccd.stage1_distill import validation_recall
from models.data import CSR, user_item_lists
from models.device import randperm
from models.entity_init import grow_member
from models.losses import annealed_weight, replay_bce_loss
from models.members import Member
from models.metrics import member_scorer
from models.replay import (
    ReplayCandidates,
    ReplaySet,
    concat_lists,
    draw_replay,
    pool_max,
    replay_batches,
    shared_replay_candidates,
    top_items_padded,
)
from models.sampling import explicit_negatives, forbidden_keys, mix_hard_negatives, sample_negatives
from models.training import FitResult, adam, fit


@dataclass
class StudentUpdateResult:
    student: Member  # CL_k
    fit: FitResult
    replay_size: int
    exclusion: Tensor | None


def bpr_and_replay_epoch(
    member: Member,
    optimizer: torch.optim.Optimizer,
    train: Interactions,
    forbidden: Tensor,
    n_neg: int,
    batch_size: int,
    replay: ReplaySet,
    replay_weight: float,
    generator: torch.Generator,
    extra_loss=None,
    hard: CSR | None = None,
    hard_rate: float = 0.0,
) -> float:
    """One epoch of Stages 2/3: BPR minibatches (SUM loss weighted by ``train.weights`` if
    any, plus ``extra_loss(users, pos, layers)`` if given, ``layers`` = the step's
    ``member.layer_embeddings()``), then the shuffled replay set with ``replay_weight`` x SUM of
    BCE-with-logits. ``hard``: each user's explicit negatives, mixed into the BPR negatives at
    ``hard_rate``."""
    member.train()
    users, items = train.users.long(), train.items.long()
    negatives = sample_negatives(
        users, member.n_items, None, None, n_neg, generator, forbidden=forbidden
    )
    if hard is not None:
        negatives = mix_hard_negatives(users, negatives, hard, hard_rate, generator)
    weights = train.weights
    total = 0.0
    for batch in randperm(len(users), generator, users.device).split(batch_size):
        w = None if weights is None else weights[batch]
        if extra_loss is None:
            loss = member.bpr_loss(users[batch], items[batch], negatives[batch], weights=w)
        else:  # one propagation for both losses
            layers, final = member.layers_and_final()
            loss = member.bpr_loss(users[batch], items[batch], negatives[batch], final, w)
            loss = loss + extra_loss(users[batch], items[batch], layers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    if replay_weight > 0:
        for part in replay_batches(replay, batch_size, generator):
            loss = replay_weight * replay_bce_loss(
                member.score_pairs(part.users, part.items), part.labels
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
    return total


def update_student(
    start: Member,
    stability: Member | None,
    plasticity: Member | None,
    teacher_top: Tensor | None,
    prev_train: Interactions,
    block: BlockData,
    cfg: CCDConfig,
    seed: int = 0,
    proxies_in_exclusion: bool = True,
) -> StudentUpdateResult:
    """CL_k from ``start`` (D_{k-1}, left untouched) on ``block``.

    Args:
        stability, plasticity: the frozen proxies S and P (None = not used; P is None at k = 1).
        teacher_top: (U_T, K) the last teacher's top-K without its train items (exclusion).
        prev_train: D_{k-1} train, filtered out of the proxies' lists with D_k train.
        proxies_in_exclusion: add S's and P's raw top-K to the exclusion lists (k >= 2).
    """
    gen = torch.Generator().manual_seed(seed)
    k = cfg.exclusion_k
    n_old = start.n_users
    exclusion = concat_lists(
        teacher_top,
        top_items_padded(member_scorer(start), n_old, n_old, k, chunk=cfg.chunk),
        *[
            top_items_padded(member_scorer(p), p.n_users, n_old, k, chunk=cfg.chunk)
            for p in (stability, plasticity)
            if proxies_in_exclusion and p is not None
        ],
    )
    student = copy.deepcopy(start)
    for param in student.parameters():
        param.requires_grad_(True)
    grow_member(
        student,
        block.train,
        block.n_users,
        block.n_items,
        cfg.entity_init,
        cfg.init_k,
        cfg.init_fill_quirk,
        gen,
    )
    student.set_graph(block.train)
    filters = [
        user_item_lists(prev_train, student.n_users),
        user_item_lists(block.train, student.n_users),
    ]
    sources = [
        (p, n)
        for p, n in ((stability, cfg.student_s_samples), (plasticity, cfg.student_p_samples))
        if p is not None and n > 0
    ]
    reference = {"scorer": member_scorer(start)}
    cached: list[ReplayCandidates] = []  # valid while the reference is the fixed start

    def candidates() -> list[ReplayCandidates]:
        fresh = shared_replay_candidates(
            [
                (member_scorer(proxy), torch.arange(proxy.n_users, device=proxy.device))
                for proxy, _ in sources
            ],
            reference["scorer"],
            cfg.student_replay_abs,
            cfg.replay_eps,
            filters,
            cfg.chunk,
        )
        if cfg.student_replay_reference == "distilled":
            cached[:] = fresh
        return fresh

    def draw() -> ReplaySet:
        pools = cached or candidates()
        draws = [draw_replay(c, n, gen) for c, (_, n) in zip(pools, sources, strict=True)]
        return pool_max(draws, student.device)

    replay = {"set": draw()}
    forbidden = forbidden_keys(
        student.n_items, user_item_lists(block.train, student.n_users), exclusion
    )
    optimizer = adam(student.parameters(), cfg.student_lr, cfg.weight_decay)
    hard = explicit_negatives(block)  # per-user lists, built once for every epoch

    def train_epoch(epoch: int) -> float:
        if cfg.replay_redraw_due(epoch):
            if cfg.student_replay_reference == "live":
                reference["scorer"] = member_scorer(student)
            replay["set"] = draw()
        weight = annealed_weight(cfg.replay_weight, epoch, cfg.student_replay_anneal)
        return bpr_and_replay_epoch(
            student,
            optimizer,
            block.train,
            forbidden,
            cfg.student_n_neg,
            cfg.student_batch,
            replay["set"],
            weight,
            gen,
            hard=hard,
            hard_rate=cfg.hard_negative_rate,
        )

    result = fit(
        train_epoch,
        validation_recall(student, block),
        student,
        cfg.student_epochs,
        cfg.eval_every,
        cfg.patience,
        skip_unselectable=True,
        label="Stage 2 student update",
    )
    student.eval()
    return StudentUpdateResult(student, result, len(replay["set"]), exclusion)
