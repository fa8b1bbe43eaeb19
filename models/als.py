"""The model a team would otherwise run from a cron job: iALS retrained from scratch on all train
data so far, after every block (``models.api.BlockLearner``; the trainer's ``CCD_LEARNER=als``
and the replay's ``als`` method).

Hyper-parameters are chosen once, on block 0's validation split (``tune_ials``), and then kept,
as a team would: the later blocks' validation splits only report.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from models.api import BlockData, BlockReport, Embeddings, Interactions
from models.device import to_device
from models.members import IALS, IALSParams, exported
from models.metrics import member_scorer, ranking_metrics, union_pairs

log = logging.getLogger("ccd.models")

# Searched on block 0's validation split; iALS needs few, coarse values (Rendle et al. 2022).
REGULARIZATION_GRID = (1.0, 10.0, 100.0, 1000.0)
ALPHA_GRID = (4.0, 16.0, 64.0, 256.0)


def valid_recall(member: IALS, block: BlockData) -> float:
    """Recall@20 on ``block.valid`` (the block's train and test items excluded, §4.1)."""
    return ranking_metrics(
        member_scorer(member), block.valid, [block.train, block.test], (20,), chunk=1024
    )["recall@20"]


def tune_ials(
    block: BlockData,
    dim: int,
    seed: int = 0,
    regularizations: Sequence[float] = REGULARIZATION_GRID,
    alphas: Sequence[float] = ALPHA_GRID,
    iterations: int = 15,
    device: torch.device | str = "cpu",
) -> tuple[IALSParams, dict[str, float]]:
    """The grid point with the best valid Recall@20 on ``block`` (fit on its train split; scored
    on ``device``), and every point's score keyed ``"reg=..,alpha=.."``."""
    scores: dict[str, float] = {}
    best: tuple[float, IALSParams] | None = None
    for reg, alpha in itertools.product(regularizations, alphas):
        params = IALSParams(reg, alpha, iterations)
        member = IALS(block.n_users, block.n_items, dim, seed).to(device)
        member.fit(block.train, block.n_users, block.n_items, params, seed=seed)
        score = valid_recall(member, block)
        scores[f"reg={reg:g},alpha={alpha:g}"] = score
        if best is None or score > best[0]:
            best = (score, params)
    assert best is not None
    log.info(
        "iALS d=%d tuned on block %d: %s (valid recall@20 %.4f)", dim, block.index, best[1], best[0]
    )
    return best[1], scores


class ALSLearner:
    """iALS refitted from scratch on every block's train split so far.

    ``params=None`` tunes the hyper-parameters on the first block's validation split (or keeps
    ``IALSParams()`` when that split is empty, as in the streaming trainer's tiny blocks).

    ``device`` is where the factors live and are scored (validation, the tuning grid's full
    rankings). The fit itself stays on the CPU on any device: it is the ``implicit`` library's
    CPU solver (its GPU solver needs a CUDA build of ``implicit``, not a dependency here), which
    is most of an ALS block's time; so the history it refits on is kept on the CPU too. Like
    the other learners, ``state_dict()`` holds CPU tensors and ``student()`` is on the CPU.

    >>> from models.api import BlockData, Interactions
    >>> import torch
    >>> pairs = Interactions(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3]))
    >>> block = BlockData(0, n_users=3, n_items=4, train=pairs)
    >>> learner = ALSLearner(dim=2, params=IALSParams(iterations=3))
    >>> learner.learn_block(block).info["pairs"]
    4
    >>> tuple(learner.student().items.shape)
    (4, 2)
    """

    def __init__(
        self,
        dim: int = 64,
        params: IALSParams | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dim, self.params, self.seed = dim, params, seed
        self.device = torch.device(device)
        self.history = Interactions.empty("cpu")  # every distinct train pair so far
        self.negatives = Interactions.empty("cpu")  # every distinct negative pair so far
        self.member: IALS | None = None
        self.blocks_seen = 0

    def learn_block(self, block: BlockData) -> BlockReport:
        times: dict[str, float] = {}
        info: dict[str, Any] = {}
        block = block.to("cpu")  # the fit's input; validation moves it to the factors' device
        if self.params is None:
            started = time.perf_counter()
            if len(block.valid):
                self.params, info["tuning_valid_recall@20"] = tune_ials(
                    block, self.dim, self.seed, device=self.device
                )
            else:
                self.params = IALSParams()
            times["tune"] = time.perf_counter() - started
        self.history = union_pairs([self.history, block.train], block.n_items)
        self.negatives = union_pairs([self.negatives, block.negatives], block.n_items)
        started = time.perf_counter()
        member = IALS(block.n_users, block.n_items, self.dim, self.seed).to(self.device)
        member.fit(
            self.history,
            block.n_users,
            block.n_items,
            self.params,
            seed=self.seed,
            negatives=self.negatives,
        )
        self.member = member
        times["fit"] = time.perf_counter() - started
        if len(block.valid):
            info["valid_recall@20"] = valid_recall(member, block)
        info |= {
            "params": asdict(self.params),
            "pairs": len(self.history),
            "block": self.blocks_seen,
        }
        self.blocks_seen += 1
        return BlockReport(times, info)

    def student(self) -> Embeddings:
        return exported(self.member)

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "seed": self.seed,
            "params": None if self.params is None else asdict(self.params),
            "history": self.history.state_dict(),
            "negatives": self.negatives.state_dict(),
            "blocks_seen": self.blocks_seen,
            "member": None if self.member is None else to_device(self.member.state_dict(), "cpu"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dim, self.seed = int(state["dim"]), int(state["seed"])
        self.params = None if state["params"] is None else IALSParams(**state["params"])
        self.history = Interactions.from_state(state["history"]).to("cpu")
        self.negatives = Interactions.from_state(
            state.get("negatives") or Interactions.empty("cpu").state_dict()
        ).to("cpu")
        self.blocks_seen = int(state["blocks_seen"])
        self.member = None
        if state["member"] is not None:
            self.member = IALS(1, 1, self.dim, self.seed).to(self.device)
            self.member.load_state_dict(state["member"])
            self.member.eval()
