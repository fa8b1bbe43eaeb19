"""Recommender members (teacher ensemble members and students)."""

from __future__ import annotations

import torch

from models.members.base import Member, exported
from models.members.ials import IALS, IALSParams
from models.members.lightgcn import LightGCN
from models.members.mf import BPRMF
from models.members.vae import MultVAE

MEMBER_KINDS = ("mf", "lightgcn", "vae", "ials")


def build_member(
    kind: str,
    n_users: int,
    n_items: int,
    dim: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    **kwargs,
) -> Member:
    """A freshly initialised member on ``device`` (initialised on the CPU, so a seed gives the
    same member everywhere); ``kwargs`` go to the class (e.g. ``n_layers``, ``uniform_noise``).
    For ``"vae"`` pass the final item count as ``n_items``."""
    classes = {"mf": BPRMF, "lightgcn": LightGCN, "vae": MultVAE, "ials": IALS}
    if kind not in classes:
        raise ValueError(f"unknown member kind {kind!r}; expected one of {MEMBER_KINDS}")
    return classes[kind](n_users, n_items, dim, seed=seed, **kwargs).to(device)


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
