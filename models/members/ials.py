"""iALS: implicit-feedback matrix factorisation fitted in closed form by alternating least squares.

The fit is the ``implicit`` library's (Hu, Koren & Volinsky 2008, conjugate-gradient solver);
this class only holds the factors as a ``Member``, so an iALS model ranks, ensembles, exports,
checkpoints and is distilled exactly like the gradient-trained members. score(u, i) = x_u · y_i.

Confidence of an observed pair is ``alpha * weight`` (the library's convention; weight 1 for an
interaction, a smaller value for a replayed pseudo-interaction) with target 1; unobserved pairs
have confidence 1 and target 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from torch import nn

from models.api import Interactions
from models.members.base import Member


@dataclass(frozen=True)
class IALSParams:
    """The iALS hyper-parameters besides the size (chosen on a validation split)."""

    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15


def confidence_matrix(
    inter: Interactions,
    n_users: int,
    n_items: int,
    weights: torch.Tensor | None = None,
    negatives: Interactions | None = None,
) -> csr_matrix:
    """(n_users, n_items) float32 CSR of the distinct pairs; a pair listed several times keeps its
    largest weight (``weights``, else the pairs' own, else 1). ``negatives`` (weights = how
    strongly) enter as -weight, which the solver reads as preference 0 with that confidence; a
    pair that is also positive stays positive.

    >>> t = torch.tensor
    >>> pairs = Interactions(t([0, 0, 1]), t([1, 1, 0]), t([1.0, 4.0, 2.0]))
    >>> dislike = Interactions(t([1, 0]), t([1, 1]), t([3.0, 3.0]))
    >>> confidence_matrix(pairs, 2, 2, negatives=dislike).toarray().tolist()
    [[0.0, 4.0], [2.0, -3.0]]
    """
    if weights is None and inter.weights is not None:
        weights = inter.weights
    users = inter.users.long().cpu().numpy()
    items = inter.items.long().cpu().numpy()
    values = np.ones(len(users), np.float32) if weights is None else weights.float().cpu().numpy()
    if negatives is not None and len(negatives):
        users = np.concatenate([users, negatives.users.long().cpu().numpy()])
        items = np.concatenate([items, negatives.items.long().cpu().numpy()])
        values = np.concatenate([values, -negatives.weight_values().abs().cpu().numpy()])
    keys = users * n_items + items
    order = np.lexsort((-values, keys))  # per key, the largest weight first
    keys, values = keys[order], values[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, values = keys[first], values[first]
    return csr_matrix((values, (keys // n_items, keys % n_items)), shape=(n_users, n_items))


def as_table(factors: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32)).clone()


class IALS(Member):
    """Matrix factorisation whose factors come from ``fit`` (closed-form ALS), not from SGD.

    The tables are ordinary ``nn.Embedding`` weights, so BPR fine-tuning (the ``teacher_ft``
    baseline) also works on an iALS member. The fit runs on the CPU whatever the member's
    device (the ``implicit`` library's CPU solver: its GPU solver needs a CUDA build of the
    library, which this project does not ship); the new factors are then put on the member's
    device, where scoring, ensembling and distillation use them.
    """

    kind = "ials"

    def fit(
        self,
        inter: Interactions,
        n_users: int,
        n_items: int,
        params: IALSParams,
        weights: torch.Tensor | None = None,
        seed: int = 0,
        warm_start: bool = False,
        negatives: Interactions | None = None,
    ) -> None:
        """Fit on ``inter`` (one row per pair, optional per-pair ``weights``; default the pairs'
        own) and explicit ``negatives`` over an ``n_users`` x ``n_items`` id space; the tables
        are replaced by the new factors.

        From scratch by default; ``warm_start`` starts the sweeps from the current tables
        (which must already have the target sizes): the closed-form analogue of fine-tuning.
        """
        # Imported here: the library pulls in its OpenMP runtime, which only trainers need.
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        matrix = confidence_matrix(inter, n_users, n_items, weights, negatives)
        # The solver parallelises over users itself; a multi-threaded BLAS inside it thrashes
        # (the library warns at construction otherwise).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.dim,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                random_state=seed,
                num_threads=max(1, torch.get_num_threads()),
                calculate_training_loss=False,
            )
            if warm_start:
                if (self.n_users, self.n_items) != (n_users, n_items):
                    raise ValueError("warm_start needs tables already grown to the target sizes")
                model.user_factors = self.user_table.weight.detach().cpu().numpy().copy()
                model.item_factors = self.item_table.weight.detach().cpu().numpy().copy()
            model.fit(matrix, show_progress=False)
        self._set_factors(model.user_factors, model.item_factors)

    def _set_factors(self, users: np.ndarray, items: np.ndarray) -> None:
        device = self.device
        self.user_table = nn.Embedding.from_pretrained(as_table(users).to(device), freeze=False)
        self.item_table = nn.Embedding.from_pretrained(as_table(items).to(device), freeze=False)
        self.n_users, self.n_items = (
            self.user_table.weight.shape[0],
            self.item_table.weight.shape[0],
        )
        self._invalidate()
