"""EMA proxies: old rows blended, new rows copied, frozen copies of the distilled student."""

from __future__ import annotations

import pytest
import torch

from models.members import build_member
from models.proxies import ema_rows, update_proxy


def test_ema_rows_values() -> None:
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    new = torch.tensor([[3.0, 1.0], [1.0, 0.0], [7.0, 7.0]])
    got = ema_rows(old, new, 0.9)
    want = torch.tensor([[0.9 * 1 + 0.1 * 3, 0.1 * 1], [0.1 * 1, 0.9 * 2], [7.0, 7.0]])
    assert torch.allclose(got, want)
    assert torch.equal(ema_rows(old, new, 0.0), new)
    assert torch.equal(ema_rows(old, new, 1.0)[:2], old)
    with pytest.raises(ValueError):
        ema_rows(new, old, 0.5)


def test_update_proxy_blends_tables_and_freezes() -> None:
    old = build_member("mf", 2, 3, 4, seed=0)
    distilled = build_member("mf", 3, 4, 4, seed=1)
    first = update_proxy(None, distilled, 0.9)
    assert torch.equal(first.user_table.weight, distilled.user_table.weight)
    proxy = update_proxy(old, distilled, 0.25)
    u_old, u_new = old.user_table.weight.detach(), distilled.user_table.weight.detach()
    assert torch.allclose(proxy.user_table.weight[:2], 0.25 * u_old + 0.75 * u_new[:2])
    assert torch.equal(proxy.user_table.weight[2], u_new[2])
    i_old, i_new = old.item_table.weight.detach(), distilled.item_table.weight.detach()
    assert torch.allclose(proxy.item_table.weight[:3], 0.25 * i_old + 0.75 * i_new[:3])
    assert torch.equal(proxy.item_table.weight[3], i_new[3])
    assert not any(p.requires_grad for p in proxy.parameters())
    # The proxy's scores use the blended tables (no stale cache) and the student is untouched.
    with torch.no_grad():
        want = proxy.user_table.weight[:1] @ proxy.item_table.weight.T
        assert torch.allclose(proxy.full_scores(torch.tensor([0])), want)
    assert distilled.user_table.weight.requires_grad


def test_lightgcn_proxy_keeps_the_distilled_graph() -> None:
    from models.api import Interactions

    distilled = build_member("lightgcn", 3, 3, 4, seed=2)
    distilled.set_graph(Interactions(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])))
    proxy = update_proxy(build_member("lightgcn", 3, 3, 4, seed=3), distilled, 0.5)
    assert torch.equal(proxy.graph_train.items, distilled.graph_train.items)
    with torch.no_grad():
        users, items = proxy.embeddings()
        # User 0's only neighbour is item 0 (degrees 1 and 1): layer 1 = item 0's ego row.
        ego_u, ego_i = proxy.user_table.weight, proxy.item_table.weight
        layer1 = ego_i[0]
        layer2 = ego_u[0]
        assert torch.allclose(users[0], (ego_u[0] + layer1 + layer2) / 3, atol=1e-6)
