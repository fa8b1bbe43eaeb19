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
from torch.utils.checkpoint import checkpoint


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
    interesting = interesting.clamp(max=clamp_max)
    uninteresting = uninteresting.clamp(max=clamp_max)
    if uninteresting_valid is not None:
        uninteresting = uninteresting.masked_fill(~uninteresting_valid, float("-inf"))
    # log sum_{t'>=t} exp(s_t') as a reversed log-cumsum-exp: stable for any score range.
    tail = torch.logcumsumexp(interesting.flip(-1), dim=-1).flip(-1)
    below = torch.logaddexp(tail, torch.logsumexp(uninteresting, dim=-1, keepdim=True))
    return -(interesting - below).sum(-1)


def _masked_logsumexp(anchors: Tensor, candidates: Tensor, tau: float) -> Tensor:
    return torch.logsumexp(anchors @ candidates.T / tau, dim=-1)


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

    The softmax denominator over all candidates is computed in row chunks under activation
    checkpointing, so memory stays O(chunk x |C|) even for Gowalla's ~40k old items.

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
    lse = candidates.new_zeros(n)
    parts = []
    for start in range(0, rows.numel(), chunk):
        block = anchors_old[rows[start : start + chunk]]
        if candidates.requires_grad:
            parts.append(checkpoint(_masked_logsumexp, block, candidates, tau, use_reentrant=False))
        else:
            parts.append(_masked_logsumexp(block, candidates, tau))
    lse = lse.index_put((rows,), torch.cat(parts))
    return torch.where(has, mean_logit - lse, torch.zeros_like(lse))


class ImitationWeightNet(nn.Module):
    """PIW (Wang et al. 2023) per-user imitation weights, as in the code's ``PIW_LWCKD``.

    G(z) = softmax_c(z · (mu_c W_c)) over the clusters, s_u = (G(z_old) - G(z_new))^2,
    w_u = Softplus(Linear(d->1)(ReLU(Linear(C->d)(s_u)))), rescaled to mean 1 over the batch.
    W (the cluster-specific transforms) and the MLP weights start N(0, 0.01), as in the code.
    """

    def __init__(self, n_clusters: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.transforms = nn.Parameter(
            torch.randn(n_clusters, dim, dim, generator=generator) * 0.01
        )
        self.state_mlp = nn.Sequential(
            nn.Linear(n_clusters, dim), nn.ReLU(), nn.Linear(dim, 1), nn.Softplus()
        )
        for layer in self.state_mlp:
            if isinstance(layer, nn.Linear):
                with torch.no_grad():
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)

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
    """lambda_e = base * exp(-epoch / temperature) (replay weight; 0-based epoch)."""
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
