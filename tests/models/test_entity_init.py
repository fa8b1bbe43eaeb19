"""Entity initialisation on a hand-made block (k_init = 2).

Old users 0..5, old items 0..3; new users 6..9, new items 4, 5. Block-k train:
    u0: 0 2 3   u1: 0   u2: 1 2 3 5   u3: -   u4: -   u5: 2 4
    u6: 0       u7: 2   u8: 4         u9: -
Old-user degrees: u0 3, u1 1, u2 4, u5 2 (u3, u4: 0). Old-item degrees: i0 3, i1 1, i2 4, i3 2.
Embeddings: E_U[u] = (u, -u), E_I[i] = (10 i, 1).

New users (N2 = old users sharing an item):
    u6: N2 = {0, 1}, |N2| == k  -> h2 = mean(E_U0, E_U1) = (0.5, -0.5); h1 = E_I0 = (0, 1)
    u7: N2 = {0, 2, 5} > k      -> 2 most popular {2, 0}: h2 = (1, -1); h1 = E_I2 = (20, 1)
    u8: N2 = {5}, 0 < |N2| < k  -> {5} + most popular other (2): h2 = (3.5, -3.5); h1 = 0
    u9: N2 = {}                 -> global top-2 {2, 0}: h2 = (1, -1); h1 = 0
New items (N2 = old items sharing a user):
    i4: users {5, 8}, N2 = {2}  -> {2} + most popular other (0): h2 = (10, 1); h1 = E_U5 = (5, -5)
    i5: users {2}, N2 = {1,2,3} -> 2 most popular {2, 3}: h2 = (25, 1); h1 = E_U2 = (2, -2)
"""

from __future__ import annotations

import torch

from models.api import Interactions
from models.entity_init import init_new_entities

TRAIN = {0: [0, 2, 3], 1: [0], 2: [1, 2, 3, 5], 5: [2, 4], 6: [0], 7: [2], 8: [4]}
E_U = torch.tensor([[float(u), -float(u)] for u in range(6)])
E_I = torch.tensor([[10.0 * i, 1.0] for i in range(4)])


def block() -> Interactions:
    pairs = [(u, i) for u, items in TRAIN.items() for i in items]
    return Interactions(torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))


def run(**kwargs):
    return init_new_entities(block(), 6, 4, 10, 6, E_U, E_I, k_init=2, **kwargs)


def test_two_hop_all_cases() -> None:
    users, items = run()
    want_users = torch.tensor(
        [
            [(0 + 0.5) / 2, (1 - 0.5) / 2],  # |N2| == k: no fill
            [(20 + 1) / 2, (1 - 1) / 2],  # |N2| > k
            [(0 + 3.5) / 2, (0 - 3.5) / 2],  # 0 < |N2| < k
            [(0 + 1) / 2, (0 - 1) / 2],  # |N2| = 0
        ]
    )
    want_items = torch.tensor([[(5 + 10) / 2, (-5 + 1) / 2], [(2 + 25) / 2, (-2 + 1) / 2]])
    assert torch.allclose(users, want_users)
    assert torch.allclose(items, want_items)


def test_fill_quirk_averages_every_old_user_when_n2_equals_k() -> None:
    users, _ = run(fill_quirk=True)
    # u6: h2 = mean of all E_U = (2.5, -2.5); the other users are unchanged.
    assert torch.allclose(users[0], torch.tensor([(0 + 2.5) / 2, (1 - 2.5) / 2]))
    assert torch.allclose(users[1:], run()[0][1:])


def test_one_hop_and_random_modes() -> None:
    users, items = run(mode="one_hop")
    assert torch.allclose(users, torch.tensor([[0.0, 1.0], [20.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(items, torch.tensor([[5.0, -5.0], [2.0, -2.0]]))
    users, items = run(mode="random", generator=torch.Generator().manual_seed(0))
    assert users.shape == (4, 2) and items.shape == (2, 2)
    assert users.abs().max() < 0.1


def test_no_new_entities_and_k_larger_than_old_count() -> None:
    users, items = init_new_entities(block(), 10, 6, 10, 6, torch.zeros(10, 2), torch.zeros(6, 2))
    assert users.shape == (0, 2) and items.shape == (0, 2)
    # k_init = 50 > 6 old users: the two-hop term averages every old user.
    users, _ = init_new_entities(block(), 6, 4, 10, 6, E_U, E_I, k_init=50)
    assert torch.allclose(users[3], torch.tensor([2.5, -2.5]) / 2)
