"""Mult-VAE member as in the code's ``Models/VAE.py`` (Gowalla teachers).

Encoder Linear(I -> d) + tanh, mean / log-std heads Linear(d -> d), decoder Linear(d -> I) with a
softmax. The input of user u is the L2-normalised row of u's current-block train interactions
(held via ``set_graph``). The item count is fixed at construction (the final catalogue size), so
the item layers never grow; ``grow`` only extends the user id range.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.api import Interactions
from models.data import dense_rows, user_item_lists
from models.device import rand, randn
from models.members.base import Member


class MultVAE(Member):
    """Mult-VAE scoring users by decoder logits (the softmax is monotone, ranks are equal).

    Args:
        uniform_noise: the code's quirk, reparameterisation noise ~ U[0, 1) instead of N(0, 1).
        eval_noise: sample the latent also when scoring (the code does); False uses the mean.
        total_anneal_steps, max_anneal: beta = min(max_anneal, step / total_anneal_steps).
    """

    kind = "vae"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        seed: int = 0,
        uniform_noise: bool = True,
        eval_noise: bool = True,
        total_anneal_steps: int = 200_000,
        max_anneal: float = 0.2,
    ) -> None:
        nn.Module.__init__(self)  # no embedding tables: skip Member.__init__
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.generator = torch.Generator().manual_seed(seed)
        self._structure_version = 0
        self._cache = None
        self.uniform_noise, self.eval_noise = uniform_noise, eval_noise
        self.total_anneal_steps, self.max_anneal = total_anneal_steps, max_anneal
        # Built on the CPU (the seeded init is drawn there); build_member moves the member.
        self.encoder = nn.Linear(n_items, dim, device="cpu")
        self.w_mean = nn.Linear(dim, dim, device="cpu")
        self.w_logstd = nn.Linear(dim, dim, device="cpu")
        self.decoder = nn.Linear(dim, n_items, device="cpu")
        for layer in (self.encoder, self.w_mean, self.w_logstd, self.decoder):
            nn.init.xavier_normal_(layer.weight, generator=self.generator)
            nn.init.normal_(layer.bias, generator=self.generator)
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long, device="cpu"))
        self.graph_train = Interactions.empty()
        self._rows: tuple[Tensor, Tensor] | None = None

    # -- inputs ------------------------------------------------------------------------------
    def set_graph(self, train: Interactions) -> None:
        """Hold ``train`` as the users' input rows (binary user-item matrix)."""
        if len(train) and int(train.items.max()) >= self.n_items:
            raise ValueError("MultVAE is built with a fixed item count; an item id exceeds it")
        self.graph_train = Interactions(train.users.long().clone(), train.items.long().clone())
        self._invalidate()

    def _invalidate(self) -> None:
        super()._invalidate()
        self._rows = None

    def input_rows(self, users: Tensor) -> Tensor:
        """L2-normalised binary input rows of ``users`` (B,), shape (B, I); unknown users -> 0."""
        if self._rows is None:
            n_rows = max(
                self.n_users, int(self.graph_train.users.max()) + 1 if len(self.graph_train) else 0
            )
            self._rows = user_item_lists(self.graph_train.to(self.device), n_rows)
        indptr, indices = self._rows
        return F.normalize(dense_rows(indptr, indices, users, self.n_items), dim=-1)

    # -- model -------------------------------------------------------------------------------
    def encode(self, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(input x (B, I), z_mean (B, d), z_logstd (B, d))."""
        x = self.input_rows(users)
        return (x, *self._encode_normalized(x))

    def _encode_normalized(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.tanh(self.encoder(x))
        return self.w_mean(hidden), self.w_logstd(hidden)

    def forward_rows(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """The forward pass on explicit input rows, e.g. train rows with weighted pseudo-labels.

        Args:
            x: (B, I) non-negative input rows (binary or weighted), L2-normalised here.
            sample: draw the latent (the noise of ``uniform_noise``); False uses the mean.

        Returns:
            (decoder logits (B, I), z_mean (B, d), z_logstd (B, d)).
        """
        mean, logstd = self._encode_normalized(F.normalize(x, dim=-1))
        return self.decoder(self._latent(mean, logstd, sample)), mean, logstd

    def _latent(self, mean: Tensor, logstd: Tensor, sample: bool) -> Tensor:
        if not sample:
            return mean
        # Drawn from torch's global CPU generator (the learner seeds it per block), then moved.
        draw = rand if self.uniform_noise else randn
        noise = draw(tuple(logstd.shape), None, logstd.device, logstd.dtype)
        return mean + noise * torch.exp(logstd)

    def full_scores(self, users: Tensor) -> Tensor:
        """Decoder logits (B, I); the latent is sampled when training or ``eval_noise``."""
        _, mean, logstd = self.encode(users)
        return self.decoder(self._latent(mean, logstd, self.training or self.eval_noise))

    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        return self.full_scores(users).gather(1, items.view(-1, 1)).squeeze(1)

    def kl_weight(self) -> float:
        return min(self.max_anneal, float(self.anneal_step) / self.total_anneal_steps)

    def vae_loss(self, users: Tensor, beta: float | None = None) -> Tensor:
        """Mean over the batch of multinomial NLL + beta * KL (the code's form).

        With ``beta=None`` the annealed weight is used and the step counter advances first.
        """
        x, mean, logstd = self.encode(users)
        logits = self.decoder(self._latent(mean, logstd, sample=True))
        recon = -(F.log_softmax(logits, dim=-1) * x).sum(-1)
        kl = 0.5 * (mean.pow(2) + torch.exp(2 * logstd) - 2 * logstd).sum(-1)
        if beta is None:
            self.anneal_step += 1
            beta = self.kl_weight()
        return (recon + beta * kl).mean()

    def bpr_loss(
        self,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        final: tuple[Tensor, Tensor] | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        raise NotImplementedError("MultVAE trains with vae_loss")

    # -- dot-product view --------------------------------------------------------------------
    def layer_embeddings(self) -> list[tuple[Tensor, Tensor]]:
        """[(users (U, d+1), items (I, d+1))]: [z_mean, 1] · [W_dec_i, b_i] = mean-latent logit."""
        device = self.device
        _, mean, _ = self.encode(torch.arange(self.n_users, device=device))
        users = torch.cat([mean, torch.ones(self.n_users, 1, device=device)], dim=1)
        items = torch.cat([self.decoder.weight, self.decoder.bias.unsqueeze(1)], dim=1)
        return [(users, items)]

    def grow(
        self,
        n_users: int,
        n_items: int,
        user_init: Tensor | None = None,
        item_init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Extend the user id range; the item count is fixed (``n_items`` must not exceed it)."""
        if n_items > self.n_items:
            raise ValueError(f"MultVAE has a fixed item count {self.n_items} < {n_items}")
        if n_users < self.n_users:
            raise ValueError("cannot shrink the user range")
        self.n_users = n_users
        self._invalidate()

    # -- checkpointing -----------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        state.update(
            n_users=self.n_users,
            graph_users=self.graph_train.users.clone(),
            graph_items=self.graph_train.items.clone(),
        )
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.n_users = int(state["n_users"])
        self.graph_train = Interactions(state["graph_users"].clone(), state["graph_items"].clone())
        super().set_extra_state(state)
