"""Common base of the recommender members: two embedding tables plus a scoring rule.

Subclasses implement ``layer_embeddings`` (and ``set_graph`` where the model uses the graph);
everything else (final embeddings, scores, BPR, growth, export) is shared. ``state_dict()``
also carries an ``_extra_state`` entry (the graph interactions and the init RNG state) so a
member round-trips completely through ``state_dict`` / ``load_state_dict`` (which first resizes
the tables to the checkpoint's shapes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.api import Embeddings, Interactions

INIT_STD = 0.01


def normal_rows(n: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """N(0, INIT_STD) rows, shape (n, dim), drawn on the CPU (``models.device``): the init of
    every embedding row in the code."""
    return torch.randn(n, dim, generator=generator, device="cpu") * INIT_STD


def grown_table(
    table: nn.Embedding, n: int, init: Tensor | None, gen: torch.Generator
) -> nn.Embedding:
    """A new (n, d) table whose first rows are bit-exact copies of ``table``'s rows."""
    old = table.weight.detach()
    n_new = n - old.shape[0]
    if n_new < 0:
        raise ValueError(f"cannot shrink a table from {old.shape[0]} to {n} rows")
    if init is None:
        init = normal_rows(n_new, old.shape[1], gen)
    if tuple(init.shape) != (n_new, old.shape[1]):
        raise ValueError(
            f"init rows must have shape {(n_new, old.shape[1])}, got {tuple(init.shape)}"
        )
    weight = torch.cat([old, init.detach().to(old.device, old.dtype)])
    return nn.Embedding.from_pretrained(weight, freeze=False)


def exported(member: Member | None) -> Embeddings:
    """``member``'s serving embeddings (CPU tensors, whatever the member's device): what a
    learner's ``student()`` returns; RuntimeError while no block was learned (``member`` is
    None)."""
    if member is None:
        raise RuntimeError("no block learned yet")
    return member.export()


class Member(nn.Module):
    """A dot-product recommender over ``n_users`` x ``n_items`` with embedding size ``dim``.

    Attributes:
        user_table: ego (layer-0) user embeddings, (U, d), N(0, 0.01) init.
        item_table: ego item embeddings, (I, d).

    A member is built on the CPU (its seeded init is drawn there) and moved with ``.to(device)``
    (``build_member(..., device=...)``); ``device`` is where its parameters are. Interactions
    given to ``set_graph`` may be on any device: the graph is built on the member's.
    """

    kind: str = "member"

    def __init__(self, n_users: int, n_items: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.generator = torch.Generator().manual_seed(seed)
        self.user_table = nn.Embedding.from_pretrained(
            normal_rows(n_users, dim, self.generator), freeze=False
        )
        self.item_table = nn.Embedding.from_pretrained(
            normal_rows(n_items, dim, self.generator), freeze=False
        )
        self._structure_version = 0
        self._cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    @property
    def device(self) -> torch.device:
        """Where the member's parameters are."""
        return next(self.parameters()).device

    def _apply(self, fn, recurse: bool = True):
        # .to(device) and the like: derived tensors (graph, cached embeddings) are rebuilt.
        out = super()._apply(fn, recurse)
        self._invalidate()
        return out

    # -- structure ---------------------------------------------------------------------------
    def set_graph(self, train: Interactions) -> None:
        """Use ``train`` (the current block's training interactions) as the graph. MF: no-op."""

    def layer_embeddings(self) -> list[tuple[Tensor, Tensor]]:
        """Per-layer (user (U, d), item (I, d)) embeddings, layer 0 = the ego tables."""
        return [(self.user_table.weight, self.item_table.weight)]

    def _combine(self, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return layers[-1]

    def _final_embeddings(self) -> tuple[Tensor, Tensor]:
        """Final embeddings computed from scratch (subclasses may fuse the layer combination)."""
        return self._combine(self.layer_embeddings())

    def layers_and_final(self) -> tuple[list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
        """``(layer_embeddings(), embeddings())`` from ONE propagation, with autograd: for a
        training step whose losses need both (Stage 3's BPR + LWC-KD)."""
        layers = self.layer_embeddings()
        return layers, self._combine(layers)

    def _cache_key(self) -> tuple:
        # The sum guards against edits through ``.data``, which do not bump ``_version``.
        params = tuple(
            (p.data_ptr(), p._version, float(p.detach().sum())) for p in self.parameters()
        )
        return (self._structure_version, params)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Final user (U, d) and item (I, d) embeddings.

        Without autograd the result is cached until a parameter, the graph or the sizes change,
        so chunked ``full_scores`` calls do not re-run graph propagation per chunk.
        ``invalidate_cache()`` forces a recomputation.
        """
        if torch.is_grad_enabled():
            return self._final_embeddings()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._final_embeddings())
        return self._cache[1]

    def _invalidate(self) -> None:
        self._structure_version += 1
        self._cache = None

    def invalidate_cache(self) -> None:
        """Drop cached final embeddings (only needed after unusual in-place parameter edits)."""
        self._invalidate()

    # -- scores and loss ---------------------------------------------------------------------
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of (users[n], items[n]) pairs, shape (n,)."""
        user_emb, item_emb = self.embeddings()
        return (user_emb[users] * item_emb[items]).sum(-1)

    def full_scores(self, users: Tensor) -> Tensor:
        """Scores of ``users`` (B,) against every item, shape (B, I)."""
        user_emb, item_emb = self.embeddings()
        return user_emb[users] @ item_emb.T

    def bpr_loss(
        self,
        users: Tensor,
        pos: Tensor,
        neg: Tensor,
        final: tuple[Tensor, Tensor] | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """BPR loss, SUM over the batch: -sum w_up log sigmoid(s_up - s_un).

        Args:
            users, pos: (n,) ids.
            neg: (n,) or (n, m) negative item ids (m negatives per positive).
            final: this step's ``embeddings()`` if already computed (saves a propagation).
            weights: (n,) per-positive weights (typed events); None = all 1.
        """
        user_emb, item_emb = self.embeddings() if final is None else final
        u = user_emb[users]
        pos_scores = (u * item_emb[pos]).sum(-1)
        if neg.dim() == 1:
            losses = -F.logsigmoid(pos_scores - (u * item_emb[neg]).sum(-1))
        else:
            neg_scores = torch.einsum("nd,nmd->nm", u, item_emb[neg])
            losses = -F.logsigmoid(pos_scores.unsqueeze(1) - neg_scores)
        if weights is None:
            return losses.sum()
        return (losses * weights.view(-1, *([1] * (losses.dim() - 1)))).sum()

    # -- growth and export -------------------------------------------------------------------
    def grow(
        self,
        n_users: int,
        n_items: int,
        user_init: Tensor | None = None,
        item_init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Enlarge the tables to (n_users, d) / (n_items, d), keeping old rows bit-exact.

        New rows are ``user_init`` / ``item_init`` ((n_new, d)) if given, else N(0, 0.01) drawn
        from ``generator`` (default: the member's own seeded generator). The table Parameters are
        replaced, so optimisers must be created after growing.
        """
        gen = generator or self.generator
        self.user_table = grown_table(self.user_table, n_users, user_init, gen)
        self.item_table = grown_table(self.item_table, n_items, item_init, gen)
        self.n_users, self.n_items = n_users, n_items
        self._invalidate()

    def export(self) -> Embeddings:
        """Detached float32 final embeddings on the CPU (the serving form)."""
        with torch.no_grad():
            users, items = self.embeddings()
        return Embeddings(
            users.detach().float().cpu().clone(), items.detach().float().cpu().clone()
        )

    # -- checkpointing -----------------------------------------------------------------------
    _DERIVED = ("_cache", "_adjacency", "_rows")  # rebuilt lazily; sparse CSR cannot be copied

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy without derived caches."""
        state = self.__dict__.copy()
        for name in self._DERIVED:
            if name in state:
                state[name] = None
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Like nn.Module's, but first resizes the tables to the checkpoint's shapes. Tensors
        are copied onto the member's device, wherever the state's are."""
        for name in ("user_table", "item_table"):
            key = f"{name}.weight"
            if key not in state_dict:
                continue
            device = getattr(self, name).weight.device
            if getattr(self, name).weight.shape != state_dict[key].shape:
                setattr(self, name, nn.Embedding(*state_dict[key].shape, device=device))
        if "user_table.weight" in state_dict:
            self.n_users = state_dict["user_table.weight"].shape[0]
            self.n_items = state_dict["item_table.weight"].shape[0]
        self._invalidate()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self._invalidate()
