"""The CCD losses (ccd-method.md §3.2-§3.5), each a plain function of score/embedding tensors.

Reductions follow the official code: BPR and replay BCE are SUMS over the batch, the ranking
distillation losses are returned per row so the caller sums and scales them, the contrastive
LWC-KD term is returned per anchor (a log-likelihood, the caller negates and averages).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bpr_loss(
    pos_scores: Tensor, neg_scores: Tensor, clamp: tuple[float, float] | None = None
) -> Tensor:
    """-sum log sigmoid(s_ui - s_uj), SUM over the batch.

    Args:
        pos_scores: (n,) positive scores.
        neg_scores: (n,) or (n, m) negative scores (m negatives per positive).
        clamp: Stage 1's quirk, clamp sigmoid(s_ui - s_uj) to [lo, hi] before the log
            (``KD.py`` uses (1e-4, 0.9999)); None = the numerically stable logsigmoid.
    """
    if neg_scores.dim() == 2:
        pos_scores = pos_scores.unsqueeze(1)
    diff = pos_scores - neg_scores
    if clamp is None:
        return -F.logsigmoid(diff).sum()
    return -torch.log(torch.sigmoid(diff).clamp(*clamp)).sum()


def relaxed_ranking_loss(
    interesting: Tensor,
    uninteresting: Tensor,
    uninteresting_valid: Tensor | None = None,
    clamp_max: float = 10.0,
) -> Tensor:
    """Plackett-Luce relaxed ranking loss of DE-RRD (and, transposed, IR-RRD), per row.

    For a row with interesting scores s_1..s_K (teacher order) and uninteresting scores U:
    L = -sum_t [ s_t - log( sum_{t'>=t} exp(s_t') + sum_{j in U} exp(s_j) ) ].
    Scores are clamped at ``clamp_max`` before use, as in the code (it caps exp overflow).

    Args:
        interesting: (B, K) scores in the teacher's order.
        uninteresting: (B, M) scores of the sampled uninteresting entities.
        uninteresting_valid: optional (B, M) bool, False = padding (row had fewer candidates).

    Returns:
        (B,) loss per row; the caller sums (the code's reduction) and scales (0.01).
    """
    uninteresting = uninteresting.clamp(max=clamp_max)
    if uninteresting_valid is not None:
        uninteresting = uninteresting.masked_fill(~uninteresting_valid, float("-inf"))
    return relaxed_ranking_loss_from_lse(
        interesting, torch.logsumexp(uninteresting, dim=-1), clamp_max
    )


def relaxed_ranking_loss_from_lse(
    interesting: Tensor, uninteresting_lse: Tensor, clamp_max: float = 10.0
) -> Tensor:
    """``relaxed_ranking_loss`` given log sum_{j in U} exp(min(s_j, clamp_max)) per row.

    Args:
        interesting: (B, K) scores in the teacher's order.
        uninteresting_lse: (B,) the uninteresting part, e.g. from ``kept_score_logsumexp``
            (-inf for a row without uninteresting entities).
    """
    interesting = interesting.clamp(max=clamp_max)
    # log sum_{t'>=t} exp(s_t') as a reversed log-cumsum-exp: stable for any score range.
    tail = torch.logcumsumexp(interesting.flip(-1), dim=-1).flip(-1)
    below = torch.logaddexp(tail, uninteresting_lse.unsqueeze(-1))
    return -(interesting - below).sum(-1)


# Row blocks of the large (rows x columns) temporaries stay under this size: glibc serves
# allocations up to its mmap threshold (32 MB at most) from the heap and reuses them, while
# larger ones are mapped fresh each time and page-faulted in (~5x the cost of the arithmetic).
BLOCK_BYTES = 16 << 20


def block_rows(n_cols: int, itemsize: int = 4) -> int:
    """Rows per block so that a (rows, n_cols) buffer of ``itemsize`` bytes fits BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // max(1, n_cols * itemsize))


# A row whose kept exp-sum, shifted by the row's overall max, falls below this is recomputed
# shifted by its kept max: above it the dropped float32 underflows are < 1e-12 of the sum.
_UNDERFLOW_GUARD = math.exp(-50.0)


class _KeptScoreLogSumExp(torch.autograd.Function):
    """Fused forward/backward of ``kept_score_logsumexp``, per block of rows one (rows, N)
    buffer reused in place: scores, shifted by the row max over ALL columns (exp of -inf or
    of underflowing arguments takes a ~5-100x slower path on CPU, so nothing is set to -inf),
    exponentiated, multiplied by the keep mask and summed. Rows whose kept part is negligible
    next to the dropped columns are recomputed with the kept max. The backward consumes the
    buffers (it may run only once)."""

    @staticmethod
    def forward(ctx, anchors: Tensor, table: Tensor, keep: Tensor, clamp_max: float) -> Tensor:
        lse, saved = [], []
        rows_all = torch.arange(anchors.shape[0], device=anchors.device)
        for rows in rows_all.split(block_rows(table.shape[0])):
            weights = anchors[rows] @ table.T
            peak = weights.amax(dim=1, keepdim=True)
            over = None
            if bool((peak > clamp_max).any()):
                over = weights > clamp_max  # clamp's gradient is zero there (torch: passes at ==)
                weights.clamp_(max=clamp_max)
                peak.clamp_(max=clamp_max)
            kept = keep[rows]
            total = weights.sub_(peak).exp_().mul_(kept.to(weights.dtype)).sum(dim=1, keepdim=True)
            small = (total < _UNDERFLOW_GUARD).squeeze(1).nonzero().squeeze(1)
            if small.numel():
                exact = (anchors[rows[small]] @ table.T).clamp_(max=clamp_max)
                exact.masked_fill_(~kept[small], float("-inf"))
                exact_peak = exact.amax(dim=1, keepdim=True)
                exact_peak = torch.where(
                    torch.isfinite(exact_peak), exact_peak, torch.zeros_like(exact_peak)
                )  # rows that keep nothing: total 0, lse -inf
                weights[small] = exact.sub_(exact_peak).exp_()
                total[small] = weights[small].sum(dim=1, keepdim=True)
                peak[small] = exact_peak
            lse.append((total.log() + peak).squeeze(1))
            saved.append((rows, weights, total, over))
        ctx.save_for_backward(anchors, table)
        ctx.blocks = saved
        return torch.cat(lse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.blocks is None:
            raise RuntimeError("kept_score_logsumexp's backward can run only once")
        anchors, table = ctx.saved_tensors
        grad_anchors = torch.empty_like(anchors) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for rows, weights, total, over in ctx.blocks:
            scale = grad[rows].unsqueeze(1) / total
            scale = torch.where(total > 0, scale, torch.zeros_like(scale))
            grad_scores = weights.mul_(scale)  # softmax over the kept columns x upstream grad
            if over is not None:
                grad_scores.masked_fill_(over, 0.0)
            if grad_anchors is not None:
                grad_anchors[rows] = grad_scores @ table
            if grad_table is not None:
                grad_table.addmm_(grad_scores.T, anchors[rows])
        ctx.blocks = None
        return grad_anchors, grad_table, None, None


def kept_score_logsumexp(
    anchors: Tensor, table: Tensor, keep: Tensor, clamp_max: float = 10.0
) -> Tensor:
    """log sum_{j: keep[b, j]} exp(min(anchors[b] · table[j], clamp_max)) per row, -inf for a
    row that keeps nothing: the uninteresting part of RRD when the sampled set is a large share
    of all columns (scoring every column densely is then cheaper than gathering the samples).

    Args:
        anchors: (B, d); table: (N, d); keep: (B, N) bool.

    Returns:
        (B,), differentiable in ``anchors`` and ``table`` (same gradients as the unfused
        clamp -> masked_fill(-inf) -> logsumexp).
    """
    return _KeptScoreLogSumExp.apply(anchors, table, keep, clamp_max)


# Above this many (anchor, candidate) logits per term, the backward recomputes them in chunks
# instead of keeping them (Yelp: ~1,500 x 12,000 = 18M per term, kept).
KEEP_LOGITS_LIMIT = 64_000_000


class _AnchoredLogSumExp(torch.autograd.Function):
    """lse_x = log sum_c exp(a_x · z_c / tau) for constant anchors a, differentiable in z.

    Per block of anchors the forward keeps exp(logit - peak) and the row sums (or, past
    ``KEEP_LOGITS_LIMIT`` logits in all, nothing); the backward is one product per block,
    dL/dz = E^T (a * g / (tau * sum)), so the logits are computed once instead of twice (forward,
    then the checkpointed recomputation) and the softmax is never materialised.
    """

    @staticmethod
    def forward(ctx, anchors: Tensor, candidates: Tensor, tau: float, chunk: int) -> Tensor:
        n = anchors.shape[0]
        keep = n * candidates.shape[0] <= KEEP_LOGITS_LIMIT
        scaled = anchors / tau
        lse, blocks = [], []
        for start in range(0, n, block_rows(candidates.shape[0]) if keep else chunk):
            rows = slice(start, start + (block_rows(candidates.shape[0]) if keep else chunk))
            logits = scaled[rows] @ candidates.T
            if keep:
                peak = logits.amax(dim=1, keepdim=True)
                total = logits.sub_(peak).exp_().sum(dim=1, keepdim=True)
                lse.append((total.log() + peak).squeeze(1))
                blocks.append((rows, logits, total))
            else:
                lse.append(torch.logsumexp(logits, dim=1))
        lse = torch.cat(lse) if lse else anchors.new_zeros(0)
        ctx.save_for_backward(scaled, candidates, lse)
        ctx.blocks, ctx.chunk, ctx.tau = blocks if keep else None, chunk, tau
        return lse

    @staticmethod
    def backward(ctx, grad: Tensor):
        scaled, candidates, lse = ctx.saved_tensors
        if ctx.blocks is not None:  # softmax = weights / total
            parts = [(w, grad[rows].unsqueeze(1) / total, rows) for rows, w, total in ctx.blocks]
        else:
            parts = []
            for start in range(0, scaled.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                softmax = (scaled[rows] @ candidates.T).sub_(lse[rows].unsqueeze(1)).exp_()
                parts.append((softmax, grad[rows].unsqueeze(1), rows))
        grad_anchors = grad_candidates = None
        if ctx.needs_input_grad[1]:
            grad_candidates = torch.zeros_like(candidates)
            for w, g, rows in parts:
                grad_candidates.addmm_(w.T, scaled[rows] * g)
        if ctx.needs_input_grad[0]:
            grad_anchors = torch.cat([(w @ candidates) * g for w, g, _ in parts]) / ctx.tau
        return grad_anchors, grad_candidates, None, None


def anchored_logsumexp(anchors: Tensor, candidates: Tensor, tau: float, chunk: int = 512) -> Tensor:
    """log sum_c exp(anchors[x] · candidates[c] / tau) per anchor, (n,); memory O(n x C) up to
    ``KEEP_LOGITS_LIMIT`` logits, else O(chunk x C) with a recomputing backward."""
    return _AnchoredLogSumExp.apply(anchors, candidates, tau, chunk)


def contrastive_kd_term(
    anchors_old: Tensor,
    candidates: Tensor,
    neighbor_rows: Tensor,
    neighbor_cols: Tensor,
    tau: float = 5.0,
    chunk: int = 512,
) -> Tensor:
    """LWC-KD's layer-wise contrastive term for each anchor x (ccd-method.md §3.5.3):

    l(x) = 1/|N(x)| sum_{c in N(x)} log softmax_{c' in C}(z_x^old · z_c' / tau)[c],
    and l(x) = 0 when N(x) is empty (the code divides a zero sum by |N| + 1e-8).

    The softmax denominator over all candidates is ``anchored_logsumexp`` (one product of the
    anchors with all candidates, kept for the backward up to a size limit, else chunked), so
    memory stays bounded even for Gowalla's ~40k old items.

    Args:
        anchors_old: (n, d) detached "before" embeddings of the anchors.
        candidates: (C, d) present (trainable) embeddings of the candidate set.
        neighbor_rows, neighbor_cols: (nnz,) the neighbour pairs (anchor position, candidate
            position); pairs may repeat only if the neighbour lists do.
        tau: temperature (5 in the code).

    Returns:
        (n,) l(x), a log-likelihood (<= 0); the loss is -mean over anchors.
    """
    n = anchors_old.shape[0]
    counts = torch.bincount(neighbor_rows, minlength=n).to(candidates.dtype)
    if n == 0 or neighbor_rows.numel() == 0:
        return candidates.new_zeros(n)
    # Mean neighbour logit per anchor: z_x · mean_{c in N(x)} z_c / tau.
    neighbor_sum = candidates.new_zeros(n, candidates.shape[1]).index_add(
        0, neighbor_rows, candidates[neighbor_cols]
    )
    has = counts > 0
    mean_logit = (anchors_old * neighbor_sum).sum(-1) / counts.clamp(min=1) / tau
    rows = has.nonzero().squeeze(1)
    lse = candidates.new_zeros(n).index_put(
        (rows,), anchored_logsumexp(anchors_old[rows], candidates, tau, chunk)
    )
    return torch.where(has, mean_logit - lse, torch.zeros_like(lse))


class ImitationWeightNet(nn.Module):
    """PIW (Wang et al. 2023) per-user imitation weights, as in the code's ``PIW_LWCKD``.

    G(z) = softmax_c(z · (mu_c W_c)) over the clusters, s_u = (G(z_old) - G(z_new))^2,
    w_u = Softplus(Linear(d->1)(ReLU(Linear(C->d)(s_u)))), rescaled to mean 1 over the batch.
    W (the cluster-specific transforms) and the MLP weights start N(0, 0.01), as in the code.
    Built on the CPU (the seeded init is drawn there); ``.to(device)`` moves it.
    """

    def __init__(self, n_clusters: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        cpu = torch.device("cpu")
        self.transforms = nn.Parameter(
            torch.randn(n_clusters, dim, dim, generator=generator, device=cpu) * 0.01
        )
        self.state_mlp = nn.Sequential(
            nn.Linear(n_clusters, dim, device=cpu),
            nn.ReLU(),
            nn.Linear(dim, 1, device=cpu),
            nn.Softplus(),
        )
        for layer in self.state_mlp:
            if isinstance(layer, nn.Linear):
                with torch.no_grad():
                    init = torch.randn(layer.weight.shape, generator=generator, device=cpu)
                    layer.weight.copy_(init * 0.01)

    def assignment(self, z: Tensor, centers: Tensor) -> Tensor:
        """G(z): (n, d), centres (C, d) -> (n, C) soft cluster assignment."""
        keys = torch.einsum("cd,cde->ce", centers, self.transforms)
        return F.softmax(z @ keys.T, dim=-1)

    def forward(self, z_old: Tensor, z_new: Tensor, centers: Tensor) -> Tensor:
        """Weights (n,), mean 1 over the batch (the code's sum-normalisation times n)."""
        state = (self.assignment(z_old, centers) - self.assignment(z_new, centers)) ** 2
        weight = self.state_mlp(state).squeeze(-1)
        return weight / (weight.sum() + 1e-8) * weight.numel()


def apply_imitation_weights(term: Tensor, weights: Tensor, per_user: bool = True) -> Tensor:
    """Weighted mean of a per-user contrastive term (n,) with PIW weights (n,).

    ``per_user=False`` reproduces the code's broadcasting bug (§8.8): an (n, 1) weight times an
    (n,) loss is an (n, n) matrix whose mean is mean(w) * mean(l) = mean(l), a no-op.
    """
    if per_user:
        return (weights * term).mean()
    return (weights.unsqueeze(1) * term.unsqueeze(0)).mean()


def cluster_loss(embeddings: Tensor, centers: Tensor) -> Tensor:
    """DEC-style clustering loss KL(P || Q), batchmean, training only the centres.

    q_ic ∝ (1 + ||z_i - mu_c||^2 / v)^(-(v+1)/2) with v = n - 1 (the code's degrees of freedom),
    p_ic ∝ q_ic^2 / sum_i q_ic, both normalised over c; P is a fixed (detached) target.

    Args:
        embeddings: (n, d) item embeddings (detached here).
        centers: (C, d) trainable cluster centres.
    """
    z = embeddings.detach()
    v = max(z.shape[0] - 1, 1)
    dist = torch.cdist(z, centers).pow(2)
    # q ∝ (1 + dist/v)^(-(v+1)/2), normalised in log space: v is ~1e4, the power underflows.
    log_q = -(v + 1) / 2 * torch.log1p(dist / v)
    q = F.softmax(log_q, dim=-1)
    p = q**2 / (q.sum(0, keepdim=True) + 1e-8)
    p = (p / (p.sum(-1, keepdim=True) + 1e-8)).detach()
    return F.kl_div(torch.log(q + 1e-8), p, reduction="batchmean")


def replay_bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """BCE-with-logits against soft labels, SUM over the batch. logits, labels: (n,)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")


def annealed_weight(base: float, epoch: int, temperature: float) -> float:
    """lambda_e = base * exp(-epoch / temperature) (replay weight; 0-based epoch).

    Examples:
        >>> annealed_weight(0.5, 0, 10.0), annealed_weight(0.5, 10, 10.0)  # 0.5 / e
        (0.5, 0.1839...)
    """
    return base * math.exp(-epoch / temperature)


def retention_kl(
    present_log_probs: Tensor, before_log_probs: Tensor, rows: Tensor, n_rows: int
) -> Tensor:
    """The VAE member's CL term per user: KL(before || present) / n_u over the user's old items.

    Per user this is ``nn.KLDivLoss(reduction="batchmean", log_target=True)(log present,
    log before)`` on the user's 1-D vector of n_u items, as in the code's ``CL_VAE_expand``
    (§3.5.4); the distributions are the softmax outputs restricted (not renormalised) to them.

    Args:
        present_log_probs, before_log_probs: (nnz,) log-probabilities of (user, item) pairs.
        rows: (nnz,) the pair's user position in 0..n_rows-1.

    Returns:
        (n_rows,) per-user terms (0 for users without pairs).
    """
    before = before_log_probs.detach()
    per_pair = before.exp() * (before - present_log_probs)
    counts = torch.bincount(rows, minlength=n_rows).clamp(min=1).to(per_pair.dtype)
    return per_pair.new_zeros(n_rows).index_add(0, rows, per_pair) / counts
