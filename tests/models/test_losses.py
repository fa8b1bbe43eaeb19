"""Each CCD loss against its formula written out directly on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from models import losses
from models.losses import (
    ImitationWeightNet,
    anchored_logsumexp,
    annealed_weight,
    apply_imitation_weights,
    bpr_loss,
    cluster_loss,
    contrastive_kd_term,
    kept_score_logsumexp,
    relaxed_ranking_loss,
    relaxed_ranking_loss_from_lse,
    replay_bce_loss,
    retention_kl,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr_sum_one_and_many_negatives() -> None:
    pos = torch.tensor([1.0, 0.0])
    neg = torch.tensor([0.5, 2.0])
    expected = -(math.log(sig(0.5)) + math.log(sig(-2.0)))
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    neg2 = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    expected2 = -sum(
        math.log(sig(p - n)) for p, row in zip([1.0, 0.0], neg2.tolist(), strict=True) for n in row
    )
    assert bpr_loss(pos, neg2).item() == pytest.approx(expected2, rel=1e-6)


def test_bpr_clamp_matches_kd_quirk() -> None:
    pos, neg = torch.tensor([20.0, -20.0]), torch.tensor([0.0, 0.0])
    # sigmoid(20) ~ 1 -> clamped to 0.9999; sigmoid(-20) ~ 0 -> clamped to 1e-4.
    expected = -(math.log(0.9999) + math.log(1e-4))
    assert bpr_loss(pos, neg, clamp=(1e-4, 0.9999)).item() == pytest.approx(expected, rel=1e-5)


def direct_rrd(inter: list[float], unint: list[float]) -> float:
    inter = [min(s, 10.0) for s in inter]
    unint = [min(s, 10.0) for s in unint]
    below_u = sum(math.exp(s) for s in unint)
    total = 0.0
    for t in range(len(inter)):
        total += inter[t] - math.log(sum(math.exp(s) for s in inter[t:]) + below_u)
    return -total


def test_relaxed_ranking_loss_against_formula_with_clamp() -> None:
    inter = torch.tensor([[2.0, 1.0, -0.5], [12.0, 0.3, 0.1]])  # 12 is clamped to 10
    unint = torch.tensor([[0.0, -1.0], [11.0, 1.0]])
    got = relaxed_ranking_loss(inter, unint)
    for row in range(2):
        want = direct_rrd(inter[row].tolist(), unint[row].tolist())
        assert got[row].item() == pytest.approx(want, rel=1e-5)


def test_relaxed_ranking_loss_padding_is_ignored() -> None:
    inter = torch.tensor([[1.0, 0.5]])
    unint = torch.tensor([[0.2, 7.0]])
    valid = torch.tensor([[True, False]])
    got = relaxed_ranking_loss(inter, unint, valid)
    assert got.item() == pytest.approx(direct_rrd([1.0, 0.5], [0.2]), rel=1e-6)


def direct_contrastive(anchor, cands, neighbors, tau):
    if not neighbors:
        return 0.0
    logits = [sum(a * c for a, c in zip(anchor, cand, strict=True)) / tau for cand in cands]
    log_z = math.log(sum(math.exp(v) for v in logits))
    return sum(logits[c] - log_z for c in neighbors) / len(neighbors)


@pytest.mark.parametrize("chunk", [1, 512])
def test_contrastive_kd_term_against_formula_and_gradient(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(3, 4, generator=g)
    cands = torch.randn(5, 4, generator=g, requires_grad=True)
    neighbors = {0: [1, 3], 1: [], 2: [4]}
    rows = torch.tensor([r for r, cs in neighbors.items() for _ in cs])
    cols = torch.tensor([c for cs in neighbors.values() for c in cs])
    got = contrastive_kd_term(anchors, cands, rows, cols, tau=5.0, chunk=chunk)
    for r in range(3):
        want = direct_contrastive(anchors[r].tolist(), cands.tolist(), neighbors[r], 5.0)
        assert got[r].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # Same gradient as the dense log-softmax form.
    got.sum().backward()
    grad = cands.grad.clone()
    cands.grad = None
    log_p = torch.log_softmax(anchors @ cands.T / 5.0, dim=1)
    dense = log_p[0, [1, 3]].mean() + log_p[2, 4]
    dense.backward()
    assert torch.allclose(grad, cands.grad, atol=1e-6)


def test_imitation_weights_mean_one_and_quirk_is_noop() -> None:
    g = torch.Generator().manual_seed(1)
    net = ImitationWeightNet(n_clusters=3, dim=4, generator=g)
    z_old, z_new = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    centers = torch.randn(3, 4, generator=g)
    w = net(z_old, z_new, centers)
    assert w.shape == (6,)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    # G is a softmax over clusters of z · (mu_c W_c).
    keys = torch.stack([centers[c] @ net.transforms[c] for c in range(3)])
    assert torch.allclose(net.assignment(z_old, centers), torch.softmax(z_old @ keys.T, 1))
    term = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    weights = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert apply_imitation_weights(term, weights).item() == pytest.approx((2 + 3 + 4 + 5 + 6) / 6)
    assert apply_imitation_weights(term, weights, per_user=False).item() == pytest.approx(3.5)


def test_cluster_loss_against_formula() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    mu = torch.tensor([[0.0, 0.1], [1.0, 1.0]], requires_grad=True)
    v = 2.0  # n - 1
    q = torch.zeros(3, 2)
    for i in range(3):
        for c in range(2):
            q[i, c] = (1 + ((z[i] - mu[c].detach()) ** 2).sum() / v) ** (-(v + 1) / 2)
    q = q / q.sum(1, keepdim=True)
    p = q**2 / q.sum(0, keepdim=True)
    p = p / p.sum(1, keepdim=True)
    want = (p * (p.log() - q.log())).sum() / 3
    got = cluster_loss(z, mu)
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-7)
    got.backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0


def test_replay_bce_annealing_and_retention_kl() -> None:
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([0.3, 1.0])
    want = -(0.3 * math.log(0.5) + 0.7 * math.log(0.5)) - math.log(sig(2.0))
    assert replay_bce_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert annealed_weight(0.5, 0, 10) == 0.5
    assert annealed_weight(0.5, 5, 10) == pytest.approx(0.5 * math.exp(-0.5))
    # User 0 has two old items, user 1 none, user 2 one.
    present = torch.log(torch.tensor([0.2, 0.1, 0.5]))
    before = torch.log(torch.tensor([0.25, 0.05, 0.4]))
    got = retention_kl(present, before, torch.tensor([0, 0, 2]), 3)
    want0 = (0.25 * math.log(0.25 / 0.2) + 0.05 * math.log(0.05 / 0.1)) / 2
    assert got.tolist() == pytest.approx([want0, 0.0, 0.4 * math.log(0.4 / 0.5)], rel=1e-5)


def test_kept_score_logsumexp_matches_clamp_mask_logsumexp() -> None:
    """The fused dense path of RRD equals clamp -> masked_fill(-inf) -> logsumexp, values and
    gradients, including clamped scores (> 10) and a row that keeps nothing."""
    g = torch.Generator().manual_seed(0)
    anchors = (3 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_()
    table = (3 * torch.randn(9, 3, generator=g, dtype=torch.float64)).requires_grad_()
    keep = torch.rand(5, 9, generator=g) < 0.6
    keep[0] = False
    scores = anchors @ table.T
    assert (scores[keep] > 10).any() and (scores[keep] < 10).any()
    want = torch.logsumexp(scores.clamp(max=10.0).masked_fill(~keep, -math.inf), dim=1)
    got = kept_score_logsumexp(anchors, table, keep)
    assert got[0].item() == -math.inf
    assert torch.allclose(got[1:], want[1:], atol=1e-12)
    weights = torch.arange(1.0, 5.0, dtype=torch.float64)
    want_grads = torch.autograd.grad((want[1:] * weights).sum(), (anchors, table))
    got_grads = torch.autograd.grad((got[1:] * weights).sum(), (anchors, table))
    for a, b in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    # Through the RRD formula the empty row contributes a finite, zero gradient.
    inter = anchors[:, :2] * 0.5
    loss = relaxed_ranking_loss_from_lse(inter, kept_score_logsumexp(anchors, table, keep)).sum()
    ref = relaxed_ranking_loss(inter, scores, keep).sum()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(table.grad).all()


@pytest.mark.parametrize("keep_limit", [10**9, 1])
def test_anchored_logsumexp_kept_and_recomputed_backward(monkeypatch, keep_limit: int) -> None:
    """Both backward modes (logits kept, or recomputed per chunk) give logsumexp's gradients."""
    monkeypatch.setattr(losses, "KEEP_LOGITS_LIMIT", keep_limit)
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cands = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    got = anchored_logsumexp(anchors, cands, tau=5.0, chunk=3)
    want = torch.logsumexp(anchors @ cands.T / 5.0, dim=1)
    assert torch.allclose(got, want, atol=1e-12)
    weights = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    got_grads = torch.autograd.grad((got * weights).sum(), (anchors, cands))
    want_grads = torch.autograd.grad((want * weights).sum(), (anchors, cands))
    for a, b in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_kept_score_logsumexp_when_dropped_columns_dominate() -> None:
    """Kept scores ~105 below a dropped one: the shift by the overall max underflows, so the
    row is recomputed with its kept max (float32, as in training)."""
    anchors = torch.ones(2, 1, requires_grad=True)
    table = torch.tensor([[12.0], [-95.0], [-100.0]], requires_grad=True)
    keep = torch.tensor([[False, True, True], [True, True, False]])
    got = kept_score_logsumexp(anchors, table, keep)
    scores = (anchors @ table.T).clamp(max=10.0).masked_fill(~keep, -math.inf)
    want = torch.logsumexp(scores, dim=1)
    assert got[0].item() == pytest.approx(-95 + math.log1p(math.exp(-5)), rel=1e-6)
    assert torch.allclose(got, want, rtol=1e-6)
    got_grads = torch.autograd.grad(got.sum(), (anchors, table))
    want_grads = torch.autograd.grad(want.sum(), (anchors, table))
    for a, b in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
