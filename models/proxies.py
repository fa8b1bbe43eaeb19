"""Stability / plasticity proxies: EMAs of the distilled students (ccd-method.md §3.4a).

At the first student update S = P = the distilled student. Later, for every ego embedding row that
existed in the old proxy: proxy <- lambda * proxy_old + (1 - lambda) * distilled; rows that are new
since then are copied from the distilled student. S uses a large lambda (slow, stability), P a
small one (fast, plasticity). A proxy is a frozen deep copy of the distilled student with its ego
tables replaced, so it scores under the distilled student's graph, as in the code.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from models.members.base import Member


def ema_rows(old: Tensor, new: Tensor, weight_old: float) -> Tensor:
    """Rows < len(old): weight_old * old + (1 - weight_old) * new; later rows: new.

    Args:
        old: (n_old, d) previous proxy rows; new: (n, d) distilled rows, n >= n_old.

    Examples:
        >>> ema_rows(torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [1.0], [4.0]]), 0.9)
        tensor([[0.1000],
                [1.0000],
                [4.0000]])
    """
    n_old = old.shape[0]
    if n_old > new.shape[0]:
        raise ValueError(f"the proxy has more rows ({n_old}) than the student ({new.shape[0]})")
    merged = new.detach().clone()
    merged[:n_old] = weight_old * old.detach() + (1.0 - weight_old) * new.detach()[:n_old]
    return merged


def freeze(member: Member) -> Member:
    member.eval()
    for param in member.parameters():
        param.requires_grad_(False)
    return member


def update_proxy(old_proxy: Member | None, distilled: Member, weight_old: float) -> Member:
    """The new proxy: a frozen copy of ``distilled`` whose ego tables are EMA-merged with
    ``old_proxy``'s (or a plain copy when there is no old proxy)."""
    proxy = copy.deepcopy(distilled)
    if old_proxy is not None:
        with torch.no_grad():
            proxy.user_table.weight.copy_(
                ema_rows(old_proxy.user_table.weight, distilled.user_table.weight, weight_old)
            )
            proxy.item_table.weight.copy_(
                ema_rows(old_proxy.item_table.weight, distilled.item_table.weight, weight_old)
            )  # in-place copies bump the parameter versions, so cached embeddings refresh
    return freeze(proxy)
