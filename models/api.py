"""The small interface between the block learners in ``models/`` and everything that drives them.

A learner sees the stream one block at a time (River's ``learn_one``, at block granularity):

    learner.learn_block(block)     # train on block k, starting from the state after block k-1
    learner.student()              # the deployable student's serving embeddings

``ccd replay`` (the paper's protocol on the shipped blocks) and the streaming trainer both use
only these two verbs plus ``state_dict`` / ``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Interactions:
    """Parallel index tensors: ``users`` (n,) and ``items`` (n,), int64."""

    users: torch.Tensor
    items: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.numel())

    @classmethod
    def empty(cls) -> Interactions:
        return cls(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Cloned tensors only, for checkpoints loaded with ``weights_only``."""
        return {"users": self.users.clone(), "items": self.items.clone()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Interactions:
        return cls(state["users"], state["items"])


@dataclass
class BlockData:
    """Block k of the stream.

    ``n_users`` / ``n_items`` are the cumulative id-space sizes after this block (indices are
    contiguous and grow as new entities appear). ``valid`` drives model selection inside the
    learner; ``test`` may be empty (the streaming trainer evaluates prequentially instead).
    """

    index: int
    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions = field(default_factory=Interactions.empty)
    test: Interactions = field(default_factory=Interactions.empty)


@dataclass
class Embeddings:
    """Serving form of a dot-product model: score(u, i) = users[u] · items[i].

    Shapes: ``users`` (U, d), ``items`` (I, d), float32, detached.
    """

    users: torch.Tensor
    items: torch.Tensor


@dataclass
class BlockReport:
    """What one ``learn_block`` did: wall time per stage (s) and anything else worth logging."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class BlockLearner(Protocol):
    def learn_block(self, block: BlockData) -> BlockReport: ...

    def student(self) -> Embeddings: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
