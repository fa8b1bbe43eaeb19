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
    """Parallel index tensors: ``users`` (n,) and ``items`` (n,), int64, and optional per-pair
    ``weights`` (n,) float32 (> 0: how strongly the pair counts; None: every pair counts 1).

    Typed events (a purchase, a like) set the weights (``contracts.events.EventWeights``); the
    paper's block files have none, and then nothing changes anywhere.
    """

    users: torch.Tensor
    items: torch.Tensor
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.users.numel())

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Interactions:
        """No pairs, on ``device`` (None: torch's default device)."""
        return cls(
            torch.empty(0, dtype=torch.long, device=device),
            torch.empty(0, dtype=torch.long, device=device),
        )

    @property
    def device(self) -> torch.device:
        return self.users.device

    def to(self, device: torch.device | str) -> Interactions:
        """The same pairs on ``device`` (no copy where they already are)."""
        weights = None if self.weights is None else self.weights.to(device)
        return Interactions(self.users.to(device), self.items.to(device), weights)

    def weight_values(self) -> torch.Tensor:
        """(n,) float32 weights, ones where none were given.

        >>> Interactions(torch.tensor([0, 1]), torch.tensor([2, 3])).weight_values()
        tensor([1., 1.])
        """
        if self.weights is None:
            return torch.ones(len(self), dtype=torch.float32, device=self.users.device)
        return self.weights.float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Cloned CPU tensors only, for checkpoints loaded with ``weights_only``."""
        state = {"users": self.users.cpu().clone(), "items": self.items.cpu().clone()}
        if self.weights is not None:
            state["weights"] = self.weights.cpu().clone()
        return state

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Interactions:
        return cls(state["users"], state["items"], state.get("weights"))


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
    # Explicit negative feedback (a dislike, an impression without a click), weights = how
    # strongly; learners that can use negatives take them as hard negatives, others ignore them.
    negatives: Interactions = field(default_factory=Interactions.empty)

    @property
    def device(self) -> torch.device:
        """Where the block's tensors are (its train split's)."""
        return self.train.device

    def to(self, device: torch.device | str) -> BlockData:
        """The same block with every split on ``device``."""
        parts = (self.train, self.valid, self.test, self.negatives)
        return BlockData(self.index, self.n_users, self.n_items, *(p.to(device) for p in parts))


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
    """A learner that sees the stream one block at a time and serves a dot-product student.

    The contract is written once, here; implementations do not repeat it:
    ``models.ccd.CCDLearner``, ``models.baselines.FineTuneLearner`` (the trainer's "bpr"),
    ``models.als.ALSLearner`` ("als") and the replay's ``experiments.distilled_baselines``.
    tests/models/test_learner_contract.py checks each against it; a new learner joins with one
    factory there.
    """

    def learn_block(self, block: BlockData) -> BlockReport:
        """Train on block k, starting from the state after block k-1.

        Preconditions, kept by the caller: block indices are consecutive, 0, 1, 2, ... (block 0
        trains from scratch; a restored learner goes on with the block after its checkpoint's
        last), and id spaces only grow: ``block.n_users`` / ``block.n_items`` are at least the
        previous block's, and an index below the previous sizes is the same entity as before.

        Returns:
            Wall seconds per stage (finite, >= 0) and any details worth logging.
        """

    def student(self) -> Embeddings:
        """The deployable student after the last learned block: ``users`` (U, d) and ``items``
        (I, d), float32, detached, on the CPU whatever the learner's device, U / I = the last
        block's ``n_users`` / ``n_items`` (the replay's "frozen" baseline keeps block 0's by
        definition).

        Raises:
            RuntimeError: before the first ``learn_block`` (there is nothing to serve).
        """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on: a fresh learner given it by ``load_state_dict`` serves
        the same student and learns the next block exactly as this one would.

        It holds only primitives (None, bool, int, float, str), CPU tensors (a learner on a GPU
        restores on a CPU machine and back), and lists, tuples and dicts of them, so that
        ``torch.load(..., weights_only=True)`` reads it (the trainer's checkpoints do:
        trainer/checkpoint.py); no dataclasses, numpy arrays or modules.
        """

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` (as loaded with ``weights_only=True``) into this learner,
        whatever it was constructed with: the state's configuration wins."""
