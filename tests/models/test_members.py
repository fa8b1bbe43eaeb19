"""Members: growth, losses, LightGCN propagation, caching, checkpoints, Mult-VAE."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models.api import Interactions
from models.graph import normalized_adjacency
from models.members import BPRMF, LightGCN, MultVAE, build_member
from models.members.lightgcn import bipartite_halves

TRAIN = Interactions(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2]))


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_init_is_small_normal_and_seeded(kind: str) -> None:
    a = build_member(kind, 300, 200, 16, seed=3)
    b = build_member(kind, 300, 200, 16, seed=3)
    assert torch.equal(a.user_table.weight, b.user_table.weight)
    assert abs(float(a.user_table.weight.detach().std()) - 0.01) < 0.001
    assert not torch.equal(
        a.user_table.weight, build_member(kind, 300, 200, 16, 4).user_table.weight
    )


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_grow_keeps_old_rows_bit_exact(kind: str) -> None:
    member = build_member(kind, 3, 4, 8, seed=0)
    old_users = member.user_table.weight.detach().clone()
    old_items = member.item_table.weight.detach().clone()
    user_init = torch.full((2, 8), 7.0)
    member.grow(5, 1000, user_init=user_init)
    assert (member.n_users, member.n_items) == (5, 1000)
    assert member.user_table.weight.shape == (5, 8) and member.item_table.weight.shape == (1000, 8)
    assert torch.equal(member.user_table.weight[:3], old_users)
    assert torch.equal(member.item_table.weight[:4], old_items)
    assert torch.equal(member.user_table.weight[3:], user_init)
    assert abs(float(member.item_table.weight.detach()[4:].std()) - 0.01) < 0.002
    assert member.user_table.weight.requires_grad
    with pytest.raises(ValueError):
        member.grow(6, 1000, user_init=torch.zeros(3, 8))  # wrong init shape
    with pytest.raises(ValueError):
        member.grow(4, 1000)  # shrink


def set_weights(member: BPRMF, users: list[list[float]], items: list[list[float]]) -> None:
    with torch.no_grad():
        member.user_table.weight.copy_(torch.tensor(users))
        member.item_table.weight.copy_(torch.tensor(items))


def test_mf_scores_and_bpr_loss_by_hand() -> None:
    member = BPRMF(1, 3, 2)
    set_weights(member, [[1.0, 0.0]], [[2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    assert member.full_scores(torch.tensor([0])).tolist() == [[2.0, 1.0, 0.0]]
    assert member.score_pairs(torch.tensor([0, 0]), torch.tensor([2, 1])).tolist() == [0.0, 1.0]
    u, p = torch.tensor([0, 0]), torch.tensor([0, 0])
    # s_pos - s_neg = 1 and 2: -log sigmoid(x) = log(1 + exp(-x)), summed
    expected = math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))
    assert member.bpr_loss(u, p, torch.tensor([1, 2])).item() == pytest.approx(expected)
    two_neg = member.bpr_loss(u, p, torch.tensor([[1, 2], [1, 2]]))
    assert two_neg.item() == pytest.approx(2 * expected)


def test_lightgcn_is_mean_of_propagated_layers() -> None:
    member = LightGCN(3, 3, 4, seed=1)
    member.set_graph(TRAIN)
    adj = normalized_adjacency(TRAIN, 3, 3).to_dense()
    ego = torch.cat([member.user_table.weight, member.item_table.weight]).detach()
    final = (ego + adj @ ego + adj @ adj @ ego) / 3
    users, items = member.embeddings()
    assert torch.allclose(users, final[:3], atol=1e-7) and torch.allclose(
        items, final[3:], atol=1e-7
    )
    layers = member.layer_embeddings()
    assert len(layers) == 3 and torch.allclose(layers[1][0], (adj @ ego)[:3], atol=1e-7)


def test_lightgcn_without_graph_gives_ego_over_three_and_grows_its_graph() -> None:
    member = LightGCN(2, 2, 4)
    users, _ = member.embeddings()
    assert torch.allclose(users, member.user_table.weight / 3)
    member.set_graph(Interactions(torch.tensor([3]), torch.tensor([0])))
    with pytest.raises(ValueError):
        member.embeddings()  # user 3 is beyond the table
    member.grow(4, 2)
    users, _ = member.embeddings()
    assert users.shape == (4, 4)
    assert not torch.allclose(users[3], member.user_table.weight[3] / 3)  # user 3 has an edge


def test_no_grad_cache_follows_optimiser_steps() -> None:
    member = LightGCN(3, 3, 4)
    member.set_graph(TRAIN)
    with torch.no_grad():
        before = member.full_scores(torch.arange(3)).clone()
        assert member.embeddings()[0] is member.embeddings()[0]  # cached
    optimizer = torch.optim.SGD(member.parameters(), lr=1.0)
    member.bpr_loss(torch.tensor([0]), torch.tensor([0]), torch.tensor([2])).backward()
    optimizer.step()
    with torch.no_grad():
        after = member.full_scores(torch.arange(3))
    assert not torch.allclose(before, after)
    assert torch.allclose(after, member.full_scores(torch.arange(3)))  # with autograd
    member.user_table.weight.data.mul_(2.0)  # bypasses the version counter
    with torch.no_grad():
        assert not torch.allclose(member.full_scores(torch.arange(3)), after)


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_state_dict_round_trip_across_sizes(kind: str) -> None:
    member = build_member(kind, 3, 3, 4, seed=5)
    member.set_graph(TRAIN)
    member.grow(4, 5)
    clone = build_member(kind, 1, 1, 4, seed=0)
    clone.load_state_dict(member.state_dict())
    assert (clone.n_users, clone.n_items) == (4, 5)
    assert torch.equal(clone.export().users, member.export().users)
    assert torch.equal(clone.export().items, member.export().items)
    member.grow(6, 5)
    clone.grow(6, 5)  # the init RNG travels with the state
    assert torch.equal(clone.user_table.weight, member.user_table.weight)


@pytest.mark.parametrize("kind", ["mf", "lightgcn", "vae"])
def test_deepcopy_is_independent_and_equal(kind: str) -> None:
    member = build_member(kind, 3, 3, 4, seed=1)
    if kind == "vae":
        member.eval_noise = False
    member.set_graph(TRAIN)
    before = member.export()  # fills the caches
    clone = copy.deepcopy(member)
    assert torch.equal(clone.export().users, before.users)
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert torch.equal(member.export().users, before.users)
    assert not torch.equal(clone.export().users, before.users)


def test_export_is_detached_float32() -> None:
    emb = build_member("lightgcn", 3, 3, 4).export()
    assert emb.users.dtype == torch.float32 and not emb.users.requires_grad


def test_vae_inputs_loss_and_dot_product_view() -> None:
    torch.manual_seed(0)
    vae = MultVAE(4, 5, 3, seed=0, eval_noise=False, total_anneal_steps=10)
    vae.set_graph(TRAIN)
    rows = vae.input_rows(torch.tensor([0, 3, 9]))
    h = 1 / math.sqrt(2)
    assert torch.allclose(rows[0], torch.tensor([h, h, 0, 0, 0]))
    assert rows[1].abs().sum() == 0 and rows[2].abs().sum() == 0  # no train row / unknown user
    vae.eval()
    scores = vae.full_scores(torch.arange(4))
    users, items = vae.embeddings()
    assert users.shape == (4, 4) and items.shape == (5, 4)
    assert torch.allclose(users @ items.T, scores, atol=1e-6)
    vae.train()
    loss = vae.vae_loss(torch.arange(3))
    assert (
        torch.isfinite(loss) and int(vae.anneal_step) == 1 and vae.kl_weight() == pytest.approx(0.1)
    )
    for _ in range(5):
        vae.vae_loss(torch.arange(3))
    assert vae.kl_weight() == pytest.approx(0.2)  # capped at max_anneal
    loss.backward()
    assert vae.encoder.weight.grad is not None


def test_vae_uniform_noise_quirk() -> None:
    vae = MultVAE(2, 5, 64, uniform_noise=True)
    mean, logstd = torch.zeros(1000, 64), torch.zeros(1000, 64)
    assert float(vae._latent(mean, logstd, sample=True).min()) >= 0.0  # U[0, 1) noise
    vae.uniform_noise = False
    assert float(vae._latent(mean, logstd, sample=True).min()) < 0.0  # Gaussian noise


def test_vae_grows_users_only_and_round_trips() -> None:
    vae = MultVAE(3, 5, 3, seed=2, eval_noise=False)
    vae.set_graph(TRAIN)
    vae.grow(6, 5)
    assert vae.export().users.shape == (6, 4)
    with pytest.raises(ValueError):
        vae.grow(6, 7)
    clone = MultVAE(1, 5, 3, seed=9, eval_noise=False)
    clone.load_state_dict(vae.state_dict())
    assert clone.n_users == 6
    assert torch.equal(clone.export().users, vae.export().users)
    with pytest.raises(NotImplementedError):
        vae.bpr_loss(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))


def test_lightgcn_gradients_match_the_dense_propagation() -> None:
    """The symmetric-adjacency backward gives the gradients of the dense formula."""
    member = LightGCN(3, 3, 4, seed=2)
    member.set_graph(TRAIN)
    adj = normalized_adjacency(TRAIN, 3, 3).to_dense()
    ego = torch.cat([member.user_table.weight, member.item_table.weight]).detach()
    ego.requires_grad_(True)
    final = (ego + adj @ ego + adj @ adj @ ego) / 3
    users, pos, neg = (
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 1, 2]),
        torch.tensor([[2], [0], [1]]),
    )
    want = -torch.nn.functional.logsigmoid(
        (final[users] * final[3 + pos]).sum(-1, keepdim=True)
        - torch.einsum("nd,nmd->nm", final[users], final[3 + neg])
    ).sum()
    want.backward()
    member.bpr_loss(users, pos, neg).backward()
    assert torch.allclose(member.user_table.weight.grad, ego.grad[:3], atol=1e-7)
    assert torch.allclose(member.item_table.weight.grad, ego.grad[3:], atol=1e-7)


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_layers_and_final_is_one_propagation_of_both(kind: str) -> None:
    member = build_member(kind, 3, 3, 4, seed=3)
    member.set_graph(TRAIN)
    layers, final = member.layers_and_final()
    for (u, i), (u2, i2) in zip(layers, member.layer_embeddings(), strict=True):
        assert torch.equal(u, u2) and torch.equal(i, i2)
    assert all(
        torch.allclose(a, b, atol=1e-7) for a, b in zip(final, member.embeddings(), strict=True)
    )
    users, pos, neg = torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([2, 0])
    assert member.bpr_loss(users, pos, neg, final).item() == pytest.approx(
        member.bpr_loss(users, pos, neg).item(), rel=1e-6
    )


def test_vae_forward_rows_on_weighted_inputs() -> None:
    vae = MultVAE(4, 5, 3, seed=1, eval_noise=False)
    vae.set_graph(TRAIN)
    vae.eval()
    binary = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])  # user 0's train row
    logits, mean, logstd = vae.forward_rows(binary, sample=False)
    assert torch.allclose(logits, vae.full_scores(torch.tensor([0])), atol=1e-6)
    weighted = torch.tensor([[1.0, 0.0, 0.1, 0.0, 0.0]])  # a replay pseudo-label
    x = weighted / weighted.norm()
    hidden = torch.tanh(x @ vae.encoder.weight.T + vae.encoder.bias)
    want_mean = hidden @ vae.w_mean.weight.T + vae.w_mean.bias
    logits, mean, logstd = vae.forward_rows(weighted, sample=False)
    assert torch.allclose(mean, want_mean, atol=1e-6)
    assert torch.allclose(logits, vae.decoder(want_mean), atol=1e-6)
    torch.manual_seed(0)
    noisy, _, _ = vae.forward_rows(weighted)  # uniform_noise: latent = mean + U[0,1) std
    torch.manual_seed(0)
    noise = torch.rand_like(logstd)
    assert torch.allclose(noisy, vae.decoder(mean + noise * logstd.exp()), atol=1e-6)


def test_bipartite_halves_are_the_blocks_of_the_normalised_adjacency() -> None:
    train = Interactions(torch.tensor([0, 0, 1, 2, 2, 0]), torch.tensor([0, 1, 1, 2, 0, 0]))
    adj = normalized_adjacency(train, 4, 3).to_dense()
    user_item, item_user = bipartite_halves(train, 4, 3)
    assert torch.allclose(user_item.to_dense(), adj[:4, 4:], atol=1e-7)
    assert torch.allclose(item_user.to_dense(), adj[4:, :4], atol=1e-7)
