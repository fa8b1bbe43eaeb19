"""Recommender members (teacher ensemble members and students)."""

from __future__ import annotations

from models.members.base import Member, exported
from models.members.ials import IALS, IALSParams
from models.members.lightgcn import LightGCN
from models.members.mf import BPRMF
from models.members.vae import MultVAE

MEMBER_KINDS = ("mf", "lightgcn", "vae", "ials")


def build_member(
    kind: str, n_users: int, n_items: int, dim: int, seed: int = 0, **kwargs
) -> Member:
    """A freshly initialised member; ``kwargs`` go to the class (e.g. ``n_layers``,
    ``uniform_noise``). For ``"vae"`` pass the final item count as ``n_items``."""
    classes = {"mf": BPRMF, "lightgcn": LightGCN, "vae": MultVAE, "ials": IALS}
    if kind not in classes:
        raise ValueError(f"unknown member kind {kind!r}; expected one of {MEMBER_KINDS}")
    return classes[kind](n_users, n_items, dim, seed=seed, **kwargs)


__all__ = [
    "BPRMF",
    "IALS",
    "IALSParams",
    "MEMBER_KINDS",
    "LightGCN",
    "Member",
    "MultVAE",
    "build_member",
    "exported",
]
