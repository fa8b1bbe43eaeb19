"""Stage 1: distil a fresh, randomly initialised student from the teacher ensemble (§3.3).

Per epoch: BPR minibatches (batch 1024, sigmoid clamped as in ``KD.py``) each plus 0.01 x the
relaxed ranking loss (RRD) of the batch's unique users (``kd_user_rrd="per_epoch"``: instead one
pass over all users after the BPR batches); then a pass over all items (shuffled, batches of
1024) with 0.01 x IR-RRD. Interesting items/users are the teacher's top-40 (train
pairs excluded: DE-RRD semantics, or the code's NaN-first quirk); uninteresting ones are drawn
uniformly without replacement from everything else, re-drawn every 10 epochs.

Cost: a sample that is at least 1/16 of the catalogue (Yelp's 10,000 of ~11,000 items) is held
as a (U x I) + (I x U) bool mask (~0.26 GB for Yelp, ~2.5 GB for Gowalla's 30,000 / 19,500) and
scored densely by a fused, blocked kernel (``losses.kept_score_logsumexp``); smaller samples are
int32 lists and gathered. Measured on Yelp block 0 with the "yelp" preset, one torch thread on
the shared 2-core machine (CPU seconds): teacher lists ~13 s, the uninteresting draw ~5 s, one
epoch ~8 s (118 BPR+RRD steps, 11 IR-RRD steps); with eval_every=5 only 6 of the 10 epochs run
(``fit``'s ``skip_unselectable``): ~70 s per distillation, against ~700 s for the previous
gathered-list implementation (lists ~70 s, draw ~23 s, ~62 s per epoch, 10 epochs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.api import BlockData, Interactions
from models.ccd.config import CCDConfig
from models.data import CSR, user_item_lists
from models.device import rand, randperm
from models.entity_init import grow_member
from models.losses import (
    bpr_loss,
    kept_score_logsumexp,
    relaxed_ranking_loss,
    relaxed_ranking_loss_from_lse,
)
from models.members import Member, build_member
from models.metrics import member_scorer, ranking_metrics
from models.replay import capped_chunk, concat_lists, fill_rows_
from models.sampling import forbidden_keys, sample_negatives
from models.training import FitResult, adam, fit

Scorer = Callable[[Tensor], Tensor]


@dataclass
class TeacherLists:
    """What Stage 1 reads off the teacher, computed in one chunked pass.

    Attributes:
        interesting_items: (U, K) per user, in teacher order.
        interesting_users: (I, K) per item, in teacher order.
        top_items: (U, K) the teacher's top-K after removing train items, the negative-exclusion
            list of the next stages (equal to ``interesting_items`` without the NaN quirk).
    """

    interesting_items: Tensor
    interesting_users: Tensor
    top_items: Tensor


def teacher_lists(
    teacher: Scorer,
    n_users: int,
    n_items: int,
    train_csr: CSR,
    k: int = 40,
    nan_quirk: bool = False,
    chunk: int = 1024,
) -> TeacherLists:
    """Interesting items (row top-k) and users (column top-k) of the teacher's scores.

    With ``nan_quirk`` the train pairs rank FIRST (HEAD sets them to NaN, which ``torch.topk``
    ranks above every number), otherwise they are excluded (DE-RRD). Columns are merged across
    user chunks with a running top-k, so no U x I matrix is held. The lists are on the device of
    ``train_csr``.
    """
    device = train_csr[0].device
    k_items, k_users = min(k, n_items), min(k, n_users)
    top_items = torch.empty(n_users, k_items, dtype=torch.long, device=device)
    interesting = top_items if not nan_quirk else torch.empty_like(top_items)
    col_values = torch.empty(0, n_items, device=device)
    col_users = torch.empty(0, n_items, dtype=torch.long, device=device)
    chunk = capped_chunk(chunk, n_items)
    with torch.no_grad():
        for start in range(0, n_users, chunk):
            batch = torch.arange(start, min(start + chunk, n_users), device=device)
            scores = teacher(batch)[:, :n_items].float()
            filtered = fill_rows_(scores.clone(), batch, train_csr, float("-inf"))
            top_items[batch] = torch.topk(filtered, k_items, dim=1).indices
            marked = filtered
            if nan_quirk:
                marked = fill_rows_(scores, batch, train_csr, float("inf"))
                interesting[batch] = torch.topk(marked, k_items, dim=1).indices
            n_kept = col_values.shape[0]
            values = torch.cat([col_values, marked])
            best = torch.topk(values, min(k_users, values.shape[0]), dim=0)
            new_users = batch[(best.indices - n_kept).clamp(min=0)]
            if n_kept:
                kept_users = col_users.gather(0, best.indices.clamp(max=n_kept - 1))
                new_users = torch.where(best.indices < n_kept, kept_users, new_users)
            col_values, col_users = best.values, new_users
    return TeacherLists(interesting, col_users.T.contiguous(), top_items)


def blocked_pairs(
    n_users: int,
    n_items: int,
    train: Interactions,
    exclusion: Tensor | None,
    lists: TeacherLists,
) -> tuple[CSR, CSR]:
    """User-side and item-side CSRs of the pairs no uninteresting sample may take: train pairs,
    the negative-exclusion lists, interesting items, and (u, i) with u interesting for i."""
    device = train.device
    keys = [train.users.long() * n_items + train.items.long()]
    rows = torch.arange(n_users, device=device).unsqueeze(1)
    keys.append((rows * n_items + lists.interesting_items).flatten())
    item_rows = torch.arange(n_items, device=device).unsqueeze(1)
    keys.append((lists.interesting_users * n_items + item_rows).flatten())
    if exclusion is not None and exclusion.numel():
        exclusion = exclusion.to(device)
        ex_rows = torch.arange(exclusion.shape[0], device=device).unsqueeze(1).expand_as(exclusion)
        ok = (exclusion >= 0) & (exclusion < n_items) & (ex_rows < n_users)
        keys.append(ex_rows[ok] * n_items + exclusion[ok])
    flat = torch.unique(torch.cat(keys))
    pairs = Interactions(flat // n_items, flat % n_items)
    by_user = user_item_lists(pairs, n_users)
    by_item = user_item_lists(Interactions(pairs.items, pairs.users), n_items)
    return by_user, by_item


def _free_keys(
    rows: Tensor, n_cols: int, blocked: CSR, generator: torch.Generator | None
) -> Tensor:
    """U[0, 1) keys (len(rows), n_cols), -1 on blocked columns. The top-m keys of a row are a
    uniform draw of m unblocked columns without replacement: the Gumbel-top-k draw of equal
    weights, whose keys -log(-log(u)) are a monotone map of these."""
    keys = rand((rows.numel(), n_cols), generator, rows.device)  # drawn on the CPU
    return fill_rows_(keys, rows, blocked, -1.0)


def sample_uninteresting(
    n_rows: int,
    n_cols: int,
    blocked: CSR,
    n_samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 512,
) -> Tensor:
    """``n_samples`` columns per row, uniformly without replacement among the unblocked ones.

    Returns:
        (n_rows, min(n_samples, n_cols)) int32, -1 where a row has fewer unblocked columns, on
        the device of ``blocked``.
    """
    device = blocked[0].device
    width = min(n_samples, n_cols)
    out = torch.full((n_rows, width), -1, dtype=torch.int32, device=device)
    for start in range(0, n_rows, chunk):
        rows = torch.arange(start, min(start + chunk, n_rows), device=device)
        values, picks = torch.topk(_free_keys(rows, n_cols, blocked, generator), width, dim=1)
        out[rows] = torch.where(values >= 0, picks, -1).to(torch.int32)
    return out


def sample_uninteresting_mask(
    n_rows: int,
    n_cols: int,
    blocked: CSR,
    n_samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 512,
) -> Tensor:
    """The same draw as ``sample_uninteresting`` (same generator -> same sets), as a mask.

    The sampled set is found with a linear-time partition instead of a sorted top-k: with
    10,000 of ~11,000 columns per row that is ~10x faster, and a (rows, cols) bool mask is
    smaller than int32 lists once more than a quarter of the columns are sampled.

    Returns:
        (n_rows, n_cols) bool, True = sampled, on the device of ``blocked``.
    """
    device = blocked[0].device
    width = min(n_samples, n_cols)
    out = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    for start in range(0, n_rows, chunk):
        rows = torch.arange(start, min(start + chunk, n_rows), device=device)
        out[rows] = top_keys_mask(_free_keys(rows, n_cols, blocked, generator), width)
    return out


def top_keys_mask(keys: Tensor, width: int) -> Tensor:
    """(B, N) bool of each row's ``width`` largest non-negative keys: the set of
    ``torch.topk(keys, width)`` without its -1 entries (ties at the cut broken like topk),
    found with a linear-time partition.

    Examples:
        >>> top_keys_mask(torch.tensor([[3, -1, 7, 5], [-1, -1, 2, -1]]), 2)
        tensor([[False, False,  True,  True],
                [False, False,  True, False]])
    """
    n_cols = keys.shape[1]
    if width <= 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    # The width-th largest key per row (blocked columns, -1, sort lowest): numpy's partition on
    # the CPU, torch's k-th value (the same value) elsewhere.
    if keys.device.type == "cpu":
        kth = torch.from_numpy(
            np.partition(keys.numpy(), n_cols - width, axis=1)[:, n_cols - width]
        )
    else:
        kth = torch.kthvalue(keys, n_cols - width + 1, dim=1).values
    sampled = (keys >= kth.unsqueeze(1)) & (keys >= 0)
    wanted = (keys >= 0).sum(1).clamp(max=width)
    tied = (sampled.sum(1) != wanted).nonzero().squeeze(1)  # equal keys at the cut
    if tied.numel():
        values, picks = torch.topk(keys[tied], width, dim=1)
        sampled[tied] = torch.zeros_like(sampled[tied]).scatter_(1, picks, values >= 0)
    return sampled


def gathered_scores(anchors: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """anchors (B, d) · table[index] for index (B, m) -> (B, m); dense matmul when m is large."""
    if index.shape[1] * 4 >= table.shape[0]:
        return (anchors @ table.T).gather(1, index)
    return torch.einsum("bd,bmd->bm", anchors, table[index])


def validation_recall(member: Member, block: BlockData) -> Callable[[], float] | None:
    """Valid Recall@20 of ``member`` on ``block`` (train and test items excluded, §4.1), or
    None when the block has no validation split (then ``fit`` keeps the last epoch)."""
    if len(block.valid) == 0:
        return None

    def validate() -> float:
        member.eval()
        metrics = ranking_metrics(
            member_scorer(member),
            block.valid,
            [block.train, block.test],
            (20,),
            chunk=capped_chunk(1024, member.n_items),
        )
        member.train()
        return metrics["recall@20"]

    return validate


def build_student(
    cfg: CCDConfig, n_users: int, n_items: int, seed: int, device: torch.device | str = "cpu"
) -> Member:
    kwargs = {"n_layers": cfg.student_layers} if cfg.student_kind == "lightgcn" else {}
    return build_member(cfg.student_kind, n_users, n_items, cfg.student_dim, seed, device, **kwargs)


@dataclass
class KDResult:
    student: Member
    lists: TeacherLists
    fit: FitResult


def distill(
    teacher: Scorer,
    block: BlockData,
    cfg: CCDConfig,
    exclusion: Tensor | None = None,
    seed: int = 0,
    lists: TeacherLists | None = None,
    start: Member | None = None,
) -> KDResult:
    """Distil a student (sizes of ``block``) from ``teacher`` on ``block.train``: a fresh one,
    or ``start`` (a copy, grown to the block's sizes by the entity initialisation). A fresh
    student is built on the block's device (``start`` is where it is).

    Args:
        teacher: the ensemble's scorer, covering block.n_users x block.n_items.
        exclusion: (U_ex, m) negative-exclusion lists (S/P/CL top-40 at k >= 1), -1 padded.
        lists: precomputed ``teacher_lists`` (else computed here).
        start: the previous distilled student, for a warm start (``distill_init="previous"``).
    """
    n_users, n_items = block.n_users, block.n_items
    train_csr = user_item_lists(block.train, n_users)
    if lists is None:
        lists = teacher_lists(
            teacher,
            n_users,
            n_items,
            train_csr,
            cfg.kd_interesting,
            cfg.kd_nan_topk_quirk,
            cfg.chunk,
        )
    if start is None:
        student = build_student(cfg, n_users, n_items, seed, block.device)
    else:
        student = copy.deepcopy(start)
        grow_member(
            student,
            block.train,
            n_users,
            n_items,
            cfg.entity_init,
            cfg.init_k,
            cfg.init_fill_quirk,
            torch.Generator().manual_seed(seed),
        )
    student.set_graph(block.train)
    excl = (
        lists.interesting_items
        if exclusion is None
        else concat_lists(exclusion, lists.interesting_items)
    )
    forbidden = forbidden_keys(n_items, train_csr, excl)
    blocked_u, blocked_i = blocked_pairs(n_users, n_items, block.train, exclusion, lists)
    gen = torch.Generator().manual_seed(seed)
    optimizer = adam(student.parameters(), cfg.kd_lr, cfg.weight_decay)
    users, items = block.train.users.long(), block.train.items.long()
    uninteresting: dict[str, Tensor] = {}

    def step(loss: Tensor) -> float:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def rrd_tables() -> tuple[Tensor, Tensor]:
        if cfg.kd_rrd_on_ego:
            return student.user_table.weight, student.item_table.weight
        return student.embeddings()

    def user_rrd(batch_users: Tensor) -> Tensor:
        ego_u, ego_i = rrd_tables()
        return cfg.kd_rrd_weight * rrd_loss(
            ego_u[batch_users],
            ego_i,
            lists.interesting_items[batch_users],
            uninteresting["items"][batch_users],
        )

    def train_epoch(epoch: int) -> float:
        student.train()
        if epoch % cfg.kd_resample_every == 0:
            uninteresting["items"] = draw_uninteresting(
                n_users, n_items, blocked_u, cfg.kd_uninteresting_items, gen
            )
            uninteresting["users"] = draw_uninteresting(
                n_items, n_users, blocked_i, cfg.kd_uninteresting_users, gen
            )
        negatives = sample_negatives(
            users, n_items, None, None, cfg.kd_n_neg, gen, forbidden=forbidden
        )
        clamp = (1e-4, 0.9999) if cfg.kd_bpr_clamp else None
        rrd_per_batch = cfg.kd_user_rrd == "per_batch"
        total = 0.0
        for batch in randperm(len(users), gen, users.device).split(cfg.kd_batch):
            u, p, n = users[batch], items[batch], negatives[batch]
            user_emb, item_emb = student.embeddings()
            pos = (user_emb[u] * item_emb[p]).sum(-1)
            neg = torch.einsum("nd,nmd->nm", user_emb[u], item_emb[n])
            loss = bpr_loss(pos, neg, clamp)
            if rrd_per_batch:
                loss = loss + user_rrd(u.unique())
            total += step(loss)
        if not rrd_per_batch:  # every user once, in shuffled batches (as IR-RRD's items below)
            for batch_users in randperm(n_users, gen, users.device).split(cfg.kd_batch):
                total += step(user_rrd(batch_users))
        for batch_items in randperm(n_items, gen, users.device).split(cfg.kd_batch):
            ego_u, ego_i = rrd_tables()
            loss = cfg.kd_ir_weight * rrd_loss(
                ego_i[batch_items],
                ego_u,
                lists.interesting_users[batch_items],
                uninteresting["users"][batch_items],
            )
            total += step(loss)
        return total

    result = fit(
        train_epoch,
        validation_recall(student, block),
        student,
        cfg.kd_epochs,
        cfg.eval_every if cfg.kd_eval_every is None else cfg.kd_eval_every,
        cfg.patience if cfg.kd_patience is None else cfg.kd_patience,
        skip_unselectable=True,
        label="Stage 1 distillation",
    )
    student.eval()
    return KDResult(student, lists, result)


def draw_uninteresting(
    n_rows: int,
    n_cols: int,
    blocked: CSR,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The uninteresting sample of every row in the form that is cheaper to train on: a
    (n_rows, n_cols) bool mask (scored densely) once at least 1/16 of the columns are drawn
    (measured crossover on Yelp: ~700 of ~11,000), else (n_rows, m) int32 lists (gathered).
    Both forms hold the same draw for the same generator state."""
    if min(n_samples, n_cols) * 16 >= n_cols:
        return sample_uninteresting_mask(n_rows, n_cols, blocked, n_samples, generator)
    return sample_uninteresting(n_rows, n_cols, blocked, n_samples, generator)


def rrd_loss(anchors: Tensor, table: Tensor, interesting: Tensor, uninteresting: Tensor) -> Tensor:
    """Summed relaxed ranking loss of ``anchors`` against their interesting / sampled lists.

    Args:
        anchors: (B, d) the rows' embeddings; table: (N, d) the columns' embeddings.
        interesting: (B, K) column ids in teacher order.
        uninteresting: the rows' sample from ``draw_uninteresting``: (B, N) bool mask (scored
            densely, fused) or (B, m) int32 lists, -1 padded (gathered).
    """
    inter_scores = gathered_scores(anchors, table, interesting)
    if uninteresting.dtype == torch.bool:
        lse = kept_score_logsumexp(anchors, table, uninteresting)
        return relaxed_ranking_loss_from_lse(inter_scores, lse).sum()
    valid = uninteresting >= 0
    unint_scores = gathered_scores(anchors, table, uninteresting.long().clamp(min=0))
    return relaxed_ranking_loss(inter_scores, unint_scores, valid).sum()
