"""Stage 3: update of each teacher member with its own CL loss plus student-side replay (§3.5),
the base teachers' training on D_0 (§2.1) and the rank ensemble of the members.

BPR / LightGCN members: entity init, then per batch
    L_BPR + 0.01 (L_UI + L_IU + L_UU + L_II) + 1.0 L_cluster
(LWC-KD contrastive terms against the member's own "before" embeddings, PIW weights per user,
DEC cluster loss on the centres), then a replay pass over samples of S, P and CL_k drawn against
the member's own live ranking, weighted 0.5 exp(-e / 5). Mult-VAE members: VAE loss + 1.0 x KL to
the before outputs on the old items, replay as pseudo-labels max(R, 0.1) in the input matrix.
iALS members (closed form): a refit on every train pair so far, student-side replay pairs at
confidence ``ials_replay_weight`` x label (off in the best variant).

Old entities are the previous teacher window's users (any split) and train items, as the code's
``b_train_dict`` keys and ``item_list``; the old rating matrix and the UU / II cosine graphs live
in the positions of those sorted lists. Building UU and II (once per Stage 3, shared by the
members) takes ~3 CPU seconds for Yelp's D_0; one member's Stage 3 on Yelp's D_1 ~17 CPU seconds
per epoch (the LWC-KD softmaxes over all old users / items are ~70% of it) and ~6 s per replay
draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.api import BlockData, Interactions
from models.ccd.config import CCDConfig
from models.ccd.stage1_distill import validation_recall
from models.ccd.stage2_student import bpr_and_replay_epoch
from models.data import CSR, dense_rows, gather_rows, user_item_lists
from models.device import randint, randperm
from models.ensemble import rank_ensemble_scorer
from models.entity_init import grow_member
from models.graph import to_csr
from models.losses import (
    ImitationWeightNet,
    annealed_weight,
    apply_imitation_weights,
    cluster_loss,
    contrastive_kd_term,
    retention_kl,
)
from models.members import IALS, IALSParams, Member, MultVAE
from models.metrics import SizedScorer, union_pairs
from models.replay import ReplaySet, capped_chunk, pool_max, sample_replay
from models.sampling import (
    explicit_negatives,
    forbidden_keys,
    mix_hard_negatives,
    sample_negatives,
)
from models.training import FitResult, adam, fit


# -- scorers and the ensemble -------------------------------------------------------------------
def sized_member_scorer(member: Member, n_items: int | None = None) -> SizedScorer:
    """A member's scorer restricted to the first ``n_items`` columns (Mult-VAE members are built
    with the final catalogue size)."""
    n_items = member.n_items if n_items is None else min(n_items, member.n_items)
    return SizedScorer(
        lambda users: member.full_scores(users)[:, :n_items],
        member.n_users,
        n_items,
        member.device,
    )


def ensemble_scorer(members: list[Member], n_items: int, power: float = 0.05) -> SizedScorer:
    """The teacher system T over the first ``n_items`` items: ``rank_ensemble_scorer`` of the
    members in eval mode, (B,) -> (B, n_items)."""
    for member in members:
        member.eval()
    scorer = rank_ensemble_scorer([sized_member_scorer(m, n_items) for m in members], power)
    assert isinstance(scorer, SizedScorer)
    return scorer


# -- windows, old lists and graphs --------------------------------------------------------------
def unique_ids(*parts: Interactions, side: str = "users") -> Tensor:
    empty = torch.empty(0, dtype=torch.long, device=parts[0].device)
    return torch.unique(torch.cat([getattr(p, side).long() for p in parts] + [empty]))


@dataclass
class TeacherWindow:
    """The data of one teacher update: ``block`` (train = all train since the last teacher
    update, valid/test = the latest block's), its users (any split) and train items."""

    block: BlockData
    users: Tensor
    items: Tensor
    present_items: Tensor

    @classmethod
    def of(cls, block: BlockData) -> TeacherWindow:
        parts = (block.train, block.valid, block.test)
        return cls(
            block,
            unique_ids(*parts, side="users"),
            unique_ids(block.train, side="items"),
            unique_ids(*parts, side="items"),
        )


def positions(ids: Tensor, size: int) -> Tensor:
    """Lookup (size,) from an id to its position in the sorted ``ids``, -1 for absent ids."""
    lookup = torch.full((size,), -1, dtype=torch.long, device=ids.device)
    lookup[ids] = torch.arange(ids.numel(), device=ids.device)
    return lookup


def similarity_graph(
    csr: CSR,
    n_cols: int,
    target_degree: float = 10.0,
    tolerance: float = 0.6,
    bounds: tuple[float, float] = (0.1 + 1e-4, 0.9 - 1e-4),
    max_iterations: int = 100,
    chunk: int = 512,
) -> CSR:
    """Binary cosine-similarity graph of the CSR's rows, thresholded as in the code.

    The threshold is bisected in ``bounds`` until the average degree is within ``tolerance`` of
    ``target_degree``; the diagonal is zero. Similarities are computed as sparse x dense products
    per chunk of rows, and only entries above the lower bound are kept (never a dense rows^2).

    Returns:
        CSR (indptr, indices) over the same rows.
    """
    indptr, indices = csr
    device = indptr.device
    n_rows = indptr.numel() - 1
    counts = (indptr[1:] - indptr[:-1]).float()
    inv_norm = counts.clamp(min=1).rsqrt()
    row_of = torch.repeat_interleave(torch.arange(n_rows, device=device), indptr[1:] - indptr[:-1])
    normed = to_csr(
        torch.sparse_coo_tensor(
            torch.stack([row_of, indices]),
            inv_norm[row_of],
            (n_rows, n_cols),
            device=device,
            check_invariants=False,
        ).coalesce()
    )  # CSR x dense is ~4x faster than COO x dense on CPU
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    for rows in torch.arange(n_rows, device=device).split(capped_chunk(chunk, max(n_cols, n_rows))):
        block = dense_rows(indptr, indices, rows, n_cols) * inv_norm[rows].unsqueeze(1)
        sims = torch.sparse.mm(normed, block.T).T  # (chunk, n_rows) cosine similarities
        sims[torch.arange(rows.numel(), device=device), rows] = 0.0
        r, c = (sims > bounds[0]).nonzero(as_tuple=True)
        kept.append((rows[r], c, sims[r, c]))
    if not kept:
        return user_item_lists(Interactions.empty(device), n_rows)
    src, dst, sim = (torch.cat(x) for x in zip(*kept, strict=True))
    ordered = torch.sort(sim).values
    lo, hi = bounds
    threshold = (lo + hi) / 2
    for _ in range(max_iterations):
        threshold = (lo + hi) / 2
        degree = (ordered.numel() - torch.searchsorted(ordered, threshold, right=True)) / max(
            n_rows, 1
        )
        if abs(float(degree) - target_degree) < tolerance:
            break
        if degree > target_degree:
            lo = threshold
        else:
            hi = threshold
    edge = sim > threshold
    return user_item_lists(Interactions(src[edge], dst[edge]), n_rows)


@dataclass
class OldStructure:
    """The previous window in old-entity positions: rating matrix (both ways) and UU / II."""

    users: Tensor  # (n_ou,) sorted old user ids
    items: Tensor  # (n_oi,) sorted old item ids
    user_pos: Tensor  # id -> position lookup
    item_pos: Tensor
    ratings: CSR  # users -> items (positions)
    ratings_t: CSR  # items -> users
    uu: CSR
    ii: CSR

    @classmethod
    def build(cls, prev: TeacherWindow, n_users: int, n_items: int, cfg: CCDConfig) -> OldStructure:
        users, items = prev.users, prev.items
        user_pos, item_pos = positions(users, n_users), positions(items, n_items)
        train = prev.block.train
        pos = Interactions(user_pos[train.users.long()], item_pos[train.items.long()])
        ok = (pos.users >= 0) & (pos.items >= 0)
        pos = Interactions(pos.users[ok], pos.items[ok])
        ratings = user_item_lists(pos, users.numel())
        ratings_t = user_item_lists(Interactions(pos.items, pos.users), items.numel())
        degree, tol = cfg.graph_degree, cfg.graph_tolerance
        uu = similarity_graph(ratings, items.numel(), degree, tol, chunk=cfg.chunk)
        ii = similarity_graph(ratings_t, users.numel(), degree, tol, chunk=cfg.chunk)
        return cls(users, items, user_pos, item_pos, ratings, ratings_t, uu, ii)


@dataclass
class ReplaySource:
    """A student-side model the teacher replays: its scorer, samples per user, and the CSRs
    of items filtered out of its list (S and P: previous and current train)."""

    scorer: SizedScorer
    n_samples: int
    filters: list[CSR] = field(default_factory=list)


@dataclass
class TeacherContext:
    """Everything shared by the members of one Stage 3."""

    window: TeacherWindow
    old: OldStructure | None
    prev: TeacherWindow | None
    sources: list[ReplaySource]
    exclusion: Tensor | None
    # Every train pair so far (iALS refits, "all" graphs); None or empty when not kept.
    history: Interactions | None = None
    # Every explicit negative pair so far (iALS refits take them as negative confidence).
    negatives: Interactions | None = None

    def graph(self, cfg: CCDConfig) -> Interactions:
        """The interactions LightGCN members propagate over (``cfg.teacher_graph``)."""
        if cfg.teacher_graph == "all" and self.history is not None and len(self.history):
            return self.history
        return self.window.block.train


# -- the LWC-KD + PIW continual loss ------------------------------------------------------------
class ContinualLoss(nn.Module):
    """LWC-KD (UI, IU, UU, II) + PIW + cluster loss of one BPR/LightGCN member (§3.5.3)."""

    def __init__(self, member: Member, ctx: TeacherContext, cfg: CCDConfig, gen: torch.Generator):
        super().__init__()
        assert ctx.old is not None
        self._member = (member,)  # a tuple, so the member's parameters are not registered twice
        self.old, self.cfg = ctx.old, cfg
        with torch.no_grad():
            layers = member.layer_embeddings()  # under the OLD graph, before growth
        self.n_layers = max(1, len(layers) - 1)  # LightGCN(2): layers 0 and 1; MF: layer 0
        quirk = cfg.lwc_position_index_quirk and member.kind == "lightgcn"
        self.before_users = [
            self._rows(layers[i][0], self.old.users, quirk) for i in range(self.n_layers)
        ]
        self.before_items = [
            self._rows(layers[i][1], self.old.items, quirk) for i in range(self.n_layers)
        ]
        self.present_items = ctx.window.present_items
        self.piw = None
        if cfg.piw:  # initialised on the CPU (its generator's), then put beside the member
            self.piw = ImitationWeightNet(cfg.n_clusters, member.dim, gen).to(member.device)
        self._gen = gen
        self.centers = nn.ParameterList()

    @staticmethod
    def _rows(table: Tensor, ids: Tensor, by_position: bool) -> Tensor:
        # The code's LightGCN path looks the old rows up by position in the sorted id list (§8.9).
        return (table[: ids.numel()] if by_position else table[ids]).detach().clone()

    def init_centers(self) -> None:
        """10 centres per layer from random old items' before embeddings (LightGCN) or random
        present items' current embeddings (MF), after the member has grown."""
        n = self.cfg.n_clusters
        for layer in range(self.n_layers):
            if self._member[0].kind == "lightgcn":
                pool = self.before_items[layer]
            else:
                pool = self._member[0].item_table.weight.detach()[self.present_items]
            pick = _random_rows(pool.shape[0], n, self._gen, pool.device)
            self.centers.append(nn.Parameter(pool[pick].clone()))

    def forward(
        self, users: Tensor, items: Tensor, layers: list[tuple[Tensor, Tensor]] | None = None
    ) -> Tensor:
        """The loss of a BPR batch's (users, items); ``layers``: the member's
        ``layer_embeddings()`` of this step, if already computed."""
        cfg, old = self.cfg, self.old
        ou = old.user_pos[users.unique()]
        ou = ou[ou >= 0]
        oi = old.item_pos[items[items < old.item_pos.numel()].unique()]
        oi = oi[oi >= 0]
        if layers is None:
            layers = self._member[0].layer_embeddings()
        total = layers[0][0].new_zeros(())
        for layer in range(self.n_layers):
            present_u, present_i = layers[layer]
            cand_u, cand_i = present_u[old.users], present_i[old.items]
            bu, bi = self.before_users[layer][ou], self.before_items[layer][oi]
            terms = []
            if ou.numel():
                ui = contrastive_kd_term(bu, cand_i, *gather_rows(*old.ratings, ou), cfg.lwc_tau)
                uu = contrastive_kd_term(bu, cand_u, *gather_rows(*old.uu, ou), cfg.lwc_tau)
                if self.piw is not None:
                    w = self.piw(bu, present_u[old.users[ou]], self.centers[layer])
                    terms += [-apply_imitation_weights(t, w, cfg.piw_per_user) for t in (ui, uu)]
                else:
                    terms += [-ui.mean(), -uu.mean()]
            if oi.numel():
                iu = contrastive_kd_term(bi, cand_u, *gather_rows(*old.ratings_t, oi), cfg.lwc_tau)
                ii = contrastive_kd_term(bi, cand_i, *gather_rows(*old.ii, oi), cfg.lwc_tau)
                terms += [-iu.mean(), -ii.mean()]
            lwc = torch.stack(terms).sum() if terms else total
            clu = cluster_loss(present_i[self.present_items], self.centers[layer])
            total = total + (cfg.lwc_weight * lwc + cfg.cluster_weight * clu) / self.n_layers
        return total * users.numel() if cfg.lwc_scale == "batch" else total


def _random_rows(n_pool: int, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    if n_pool >= n:
        return randperm(n_pool, gen, device)[:n]
    return randint(0, max(n_pool, 1), (n,), gen, device)


# -- one member's update ------------------------------------------------------------------------
def draw_teacher_replay(
    member: Member, ctx: TeacherContext, cfg: CCDConfig, gen: torch.Generator
) -> ReplaySet:
    """Student-side replay of every source, against the member's current ranking."""
    reference = sized_member_scorer(member)
    parts = [
        sample_replay(
            src.scorer,
            reference,
            torch.arange(src.scorer.n_users, device=src.scorer.device),
            src.n_samples,
            cfg.teacher_replay_abs,
            cfg.replay_eps,
            src.filters,
            gen,
            cfg.chunk,
        )
        for src in ctx.sources
        if src.n_samples > 0
    ]
    return pool_max(parts, member.device)


def update_member(
    member: Member,
    ctx: TeacherContext,
    cfg: CCDConfig,
    seed: int = 0,
    continual: bool = True,
) -> FitResult:
    """Stage 3 for one member, in place: grow, CL loss (if ``continual``), replay of
    ``ctx.sources``, model selection on the window's validation split.

    ``continual=False`` with no sources is plain fine-tuning (the "teacher_ft" baseline).
    """
    gen = torch.Generator().manual_seed(seed)
    window = ctx.window.block
    if isinstance(member, MultVAE):
        return _update_vae(member, ctx, cfg, gen, continual)
    if isinstance(member, IALS):
        return _update_ials(member, ctx, cfg, gen, seed, continual)
    has_old = ctx.old is not None and ctx.old.users.numel() > 0 and ctx.old.items.numel() > 0
    loss = ContinualLoss(member, ctx, cfg, gen) if continual and has_old else None
    init = cfg.entity_init if continual else "random"
    grow_member(
        member,
        window.train,
        window.n_users,
        window.n_items,
        init,
        cfg.init_k,
        cfg.init_fill_quirk,
        gen,
    )
    member.set_graph(ctx.graph(cfg))
    params = list(member.parameters())
    if loss is not None:
        loss.init_centers()
        params += list(loss.parameters())
    optimizer = adam(params, cfg.teacher_lr, cfg.weight_decay)
    forbidden = forbidden_keys(
        member.n_items, user_item_lists(window.train, member.n_users), ctx.exclusion
    )
    replay = {"set": draw_teacher_replay(member, ctx, cfg, gen)}
    hard = explicit_negatives(window)  # per-user lists, built once for every epoch

    def train_epoch(epoch: int) -> float:
        if cfg.replay_redraw_due(epoch):
            replay["set"] = draw_teacher_replay(member, ctx, cfg, gen)
        weight = annealed_weight(cfg.replay_weight, epoch, cfg.teacher_replay_anneal)
        return bpr_and_replay_epoch(
            member,
            optimizer,
            window.train,
            forbidden,
            cfg.teacher_n_neg,
            cfg.teacher_batch,
            replay["set"],
            weight,
            gen,
            loss,
            hard=hard,
            hard_rate=cfg.hard_negative_rate,
        )

    result = fit(
        train_epoch,
        validation_recall(member, window),
        member,
        cfg.teacher_epochs,
        cfg.eval_every,
        cfg.patience,
        skip_unselectable=True,
        label=f"Stage 3 {type(member).__name__} update",
    )
    member.eval()
    return result


# -- iALS members -------------------------------------------------------------------------------
def ials_params(cfg: CCDConfig) -> IALSParams:
    return IALSParams(cfg.ials_regularization, cfg.ials_alpha, cfg.ials_iterations)


def _update_ials(
    member: IALS,
    ctx: TeacherContext,
    cfg: CCDConfig,
    gen: torch.Generator,
    seed: int,
    continual: bool,
) -> FitResult:
    """Stage 3 of a closed-form member. CCD (``continual``): a refit on every train pair so far
    plus the student-side replay pairs (S, P, CL_k drawn against the member's own ranking, as
    for the other members) at confidence ``ials_replay_weight x label``. Without ``continual``
    (the ``teacher_ft`` baseline) the analogue of fine-tuning: ALS sweeps on the window only,
    warm-started from the current factors."""
    window = ctx.window.block
    grow_member(
        member,
        window.train,
        window.n_users,
        window.n_items,
        "random",
        cfg.init_k,
        cfg.init_fill_quirk,
        gen,
    )
    if not continual:
        member.fit(
            window.train,
            window.n_users,
            window.n_items,
            ials_params(cfg),
            seed=seed,
            warm_start=True,
            negatives=window.negatives,
        )
        return _closed_form_result(member, window)
    data = ctx.history if ctx.history is not None and len(ctx.history) else window.train
    negatives = ctx.negatives if ctx.negatives is not None else window.negatives
    weights = data.weights
    if cfg.ials_replay_weight > 0 and ctx.sources:
        replay = draw_teacher_replay(member, ctx, cfg, gen)
        weights = torch.cat([data.weight_values(), cfg.ials_replay_weight * replay.labels.float()])
        data = Interactions(
            torch.cat([data.users.long(), replay.users]),
            torch.cat([data.items.long(), replay.items]),
        )
    member.fit(
        data,
        window.n_users,
        window.n_items,
        ials_params(cfg),
        weights,
        seed=seed,
        negatives=negatives,
    )
    return _closed_form_result(member, window)


def _closed_form_result(member: Member, block: BlockData) -> FitResult:
    """A ``FitResult`` for a fit without epochs: one "epoch", scored on the valid split."""
    validate = validation_recall(member, block)
    score = validate() if validate is not None else float("-inf")
    member.eval()  # validation leaves the member in training mode
    return FitResult(best_score=score, best_epoch=0, epochs_run=1, stopped_early=False)


# -- Mult-VAE members ---------------------------------------------------------------------------
def _common_pairs(ctx: TeacherContext) -> Interactions:
    """Previous-window train pairs whose user or item is also present now (the code's
    ``get_info_for_VAE_Teacher``), de-duplicated."""
    if ctx.prev is None or len(ctx.prev.block.train) == 0:
        return Interactions.empty(ctx.window.users.device)
    train = ctx.prev.block.train
    users, items = train.users.long(), train.items.long()
    keep = torch.isin(users, ctx.window.users) | torch.isin(items, ctx.window.present_items)
    stride = int(items.max()) + 1
    keys = torch.unique(users[keep] * stride + items[keep])
    return Interactions(keys // stride, keys % stride)


def _weighted_rows(
    train_csr: CSR, replay: ReplaySet, users: Tensor, n_items: int, value: float
) -> Tensor:
    """Input rows (B, I): 1 on train items, max(R, value) on replay items (pseudo-labels)."""
    x = torch.zeros(users.numel(), n_items, device=users.device)
    lookup = positions(users, int(users.max()) + 1)
    if len(replay):
        inside = replay.users < lookup.numel()
        rows = lookup[replay.users[inside]]
        ok = rows >= 0
        x[rows[ok], replay.items[inside][ok]] = value
    r, c = gather_rows(*train_csr, users)
    x[r, c] = 1.0
    return x


def _update_vae(
    vae: MultVAE, ctx: TeacherContext, cfg: CCDConfig, gen: torch.Generator, continual: bool
) -> FitResult:
    window = ctx.window.block
    device = vae.device
    common = _common_pairs(ctx) if continual else Interactions.empty(device)
    before = torch.empty(0, device=device)
    if len(common):
        with torch.no_grad():  # the before outputs: old model, old input rows
            vae.eval()
            before = _log_probs_at(vae, common, cfg.chunk)
    vae.grow(window.n_users, vae.n_items)
    vae.set_graph(window.train)
    n_users = vae.n_users
    train_csr = user_item_lists(window.train, n_users)
    common_csr = user_item_lists(common, n_users) if len(common) else None
    before_by_key = _keyed(common, before, vae.n_items)
    optimizer = adam(vae.parameters(), cfg.teacher_lr, cfg.weight_decay)
    replay = {"set": draw_teacher_replay(vae, ctx, cfg, gen)}

    def train_epoch(epoch: int) -> float:
        if cfg.replay_redraw_due(epoch):
            replay["set"] = draw_teacher_replay(vae, ctx, cfg, gen)
        vae.train()
        total = 0.0
        for users in randperm(n_users, gen, device).split(cfg.teacher_batch):
            x = _weighted_rows(train_csr, replay["set"], users, vae.n_items, cfg.vae_replay_value)
            logits, mean, logstd = vae.forward_rows(x)
            vae.anneal_step += 1
            recon = -(F.log_softmax(logits, -1) * F.normalize(x, dim=-1)).sum(-1)
            kl = 0.5 * (mean.pow(2) + torch.exp(2 * logstd) - 2 * logstd).sum(-1)
            loss = (recon + vae.kl_weight() * kl).mean()
            if common_csr is not None:
                loss = loss + cfg.vae_kl_weight * _vae_retention(
                    logits, users, common_csr, before_by_key, vae.n_items
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        return total

    result = fit(
        train_epoch,
        validation_recall(vae, window),
        vae,
        cfg.teacher_epochs,
        cfg.eval_every,
        cfg.patience,
        skip_unselectable=True,
        label="Stage 3 MultVAE update",
    )
    vae.eval()
    return result


def _log_probs_at(vae: MultVAE, pairs: Interactions, chunk: int) -> Tensor:
    """log softmax(vae(u))[i] for each pair, computed per chunk of users. (nnz,)"""
    out = torch.empty(len(pairs), device=pairs.device)
    users = pairs.users.long()
    for batch in torch.unique(users).split(chunk):
        log_p = F.log_softmax(vae.full_scores(batch), -1)
        sel = torch.isin(users, batch).nonzero().squeeze(1)
        row = positions(batch, int(batch.max()) + 1)[users[sel]]
        out[sel] = log_p[row, pairs.items[sel].long()]
    return out


def _keyed(pairs: Interactions, values: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    keys = pairs.users.long() * n_items + pairs.items.long()
    order = torch.argsort(keys)
    return keys[order], values[order]


def _vae_retention(
    logits: Tensor, users: Tensor, common_csr: CSR, before: tuple[Tensor, Tensor], n_items: int
) -> Tensor:
    rows, items = gather_rows(*common_csr, users)
    if rows.numel() == 0:
        return logits.new_zeros(())
    present = F.log_softmax(logits, -1)[rows, items]
    keys, values = before
    idx = torch.searchsorted(keys, users[rows] * n_items + items)
    per_user = retention_kl(present, values[idx], rows, users.numel())
    has = torch.bincount(rows, minlength=users.numel()) > 0
    return per_user[has].mean()


# -- base teachers (block 0) --------------------------------------------------------------------
def train_base_member(member: Member, block: BlockData, cfg: CCDConfig, seed: int = 0) -> FitResult:
    """D_0 training of one teacher member (``Base_teacher.py``): BPR with 2 negatives (SUM),
    batch 512, or the annealed VAE loss; validation every epoch, patience 10."""
    if isinstance(member, IALS):
        member.fit(
            block.train,
            block.n_users,
            block.n_items,
            ials_params(cfg),
            seed=seed,
            negatives=block.negatives,
        )
        return _closed_form_result(member, block)
    gen = torch.Generator().manual_seed(seed)
    member.set_graph(block.train)
    optimizer = adam(member.parameters(), cfg.base_lr, cfg.weight_decay)
    users, items = block.train.users.long(), block.train.items.long()
    forbidden = forbidden_keys(member.n_items, user_item_lists(block.train, member.n_users), None)
    hard = explicit_negatives(block)

    def step(loss: Tensor) -> float:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def train_epoch(epoch: int) -> float:
        member.train()
        if isinstance(member, MultVAE):
            return sum(
                step(member.vae_loss(batch))
                for batch in randperm(member.n_users, gen, users.device).split(cfg.base_batch)
            )
        negatives = sample_negatives(
            users, member.n_items, None, None, cfg.base_n_neg, gen, forbidden=forbidden
        )
        if hard is not None:
            negatives = mix_hard_negatives(users, negatives, hard, cfg.hard_negative_rate, gen)
        weights = block.train.weights
        return sum(
            step(
                member.bpr_loss(
                    users[b],
                    items[b],
                    negatives[b],
                    weights=None if weights is None else weights[b],
                )
            )
            for b in randperm(len(users), gen, users.device).split(cfg.base_batch)
        )

    result = fit(
        train_epoch,
        validation_recall(member, block),
        member,
        cfg.base_epochs,
        cfg.base_eval_every,
        cfg.base_patience,
        skip_unselectable=True,
        label=f"base training of a {type(member).__name__} teacher",
    )
    member.eval()
    return result


def merge_windows(parts: list[BlockData]) -> BlockData:
    """One window of several blocks: union of the train splits (duplicates dropped), the last
    block's valid/test and sizes."""
    last = parts[-1]
    if len(parts) == 1:
        return last
    train = union_pairs([p.train for p in parts], last.n_items)
    negatives = union_pairs([p.negatives for p in parts], last.n_items)
    return BlockData(
        last.index, last.n_users, last.n_items, train, last.valid, last.test, negatives
    )
