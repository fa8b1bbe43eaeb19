"""Serving the teacher ensemble through the student's code path, to compare their costs.

``TeacherServingModel`` is a ``service.ranking.ServingModel`` whose scores come from the rank
ensemble of several dot-product members (ccd-method.md §2.1, ``models.ensemble``): each member
ranks the whole catalogue (a full sort), and the fused score is the mean over members of
``(1 / (rank + 1)) ** power``. Everything else (seen-items masking, top-k, the response) is the
student's code. A teacher snapshot holds its members side by side: member m's columns are
``[sum(dims[:m]), sum(dims[:m + 1]))`` (``meta["teacher_member_dims"]``, see
``bench.catalogue``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from contracts.model_store import ModelSnapshot
from models.ensemble import rank_ensemble_scorer
from models.metrics import Scorer
from service.ranking import ServingModel

DEFAULT_POWER = 0.05  # ccd-method.md §2.1


def _member_scorer(users: torch.Tensor, items: torch.Tensor) -> Scorer:
    """Dot-product scorer of one member: rows (B,) -> (B, I)."""
    return lambda rows: users[rows] @ items.T


@dataclass(frozen=True, eq=False)
class TeacherServingModel(ServingModel):
    """A ``ServingModel`` scoring with the teacher ensemble.

    Shapes: ``members`` holds each member's (user (U, d_m), item (I, d_m)) tables, contiguous.
    """

    members: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    power: float = DEFAULT_POWER

    @classmethod
    def from_snapshot(cls, snapshot: ModelSnapshot, ann_min_items: int = 0) -> TeacherServingModel:
        """``ann_min_items`` is ignored: the ensemble's fused ranks are no inner product, so
        a teacher always ranks by the exact scan."""
        base = ServingModel.from_snapshot(snapshot)
        dims = [int(d) for d in snapshot.meta.get("teacher_member_dims") or [base.dim]]
        if sum(dims) != base.dim:
            raise ValueError(f"member dims {dims} do not add up to the table width {base.dim}")
        members, start = [], 0
        for dim in dims:
            columns = slice(start, start + dim)
            members.append(
                (
                    torch.from_numpy(np.ascontiguousarray(base.user_vectors[:, columns])),
                    torch.from_numpy(np.ascontiguousarray(base.item_matrix[:, columns])),
                )
            )
            start += dim
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ServingModel)}
        power = float(snapshot.meta.get("ensemble_power", DEFAULT_POWER))
        return cls(**fields, members=tuple(members), power=power)

    def score_users(self, user_rows: list[int]) -> np.ndarray:
        """Rank-ensemble scores of the given users, (B, I) float32 (a new array)."""
        scorer = rank_ensemble_scorer([_member_scorer(u, i) for u, i in self.members], self.power)
        with torch.inference_mode():
            return scorer(torch.tensor(user_rows, dtype=torch.long)).float().numpy()


def install_teacher_serving() -> None:
    """Make this process's model holder build ``TeacherServingModel``s (bench servers only)."""
    import service.model_holder

    service.model_holder.ServingModel = TeacherServingModel  # type: ignore[misc]
