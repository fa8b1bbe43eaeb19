"""Baselines that need no distillation: plain fine-tuning of one BPR student per block."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from models.api import BlockData, BlockReport, Embeddings
from models.data import user_item_lists
from models.device import randperm, to_device
from models.members import Member, build_member, exported
from models.metrics import member_scorer, ranking_metrics
from models.sampling import (
    explicit_negatives,
    forbidden_keys,
    mix_hard_negatives,
    sample_negatives,
)
from models.training import FitResult, adam, fit


@dataclass
class FineTuneConfig:
    dim: int = 16
    kind: str = "mf"
    epochs: int = 20
    base_epochs: int | None = None  # block 0 (from scratch); None = ``epochs``
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 2048
    n_neg: int = 1
    seed: int = 0
    eval_every: int = 1
    patience: int = 3
    hard_negative_rate: float = 0.5  # share of negatives from the user's explicit negatives


class FineTuneLearner:
    """The FT baseline and the trainer's "bpr" learner (implements ``models.api.BlockLearner``).

    Block 0 trains a fresh member; each later block grows the tables to the block's sizes (new
    rows N(0, 0.01), old rows kept) and fine-tunes on the block's train split with BPR (sum
    reduction, uniform negatives excluding the block's positives), Adam with weight decay, a new
    optimiser per block. With a non-empty ``block.valid``, ``fit`` keeps the epoch with the best
    valid Recall@20 (train and test items excluded from the ranking).

    ``device`` is where the member trains (``models.device``): a placement, not part of the
    config nor of ``state_dict()`` (CPU tensors); ``student()`` is on the CPU.
    """

    def __init__(
        self,
        *,
        dim: int = 16,
        kind: str = "mf",
        epochs: int = 20,
        base_epochs: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 2048,
        n_neg: int = 1,
        seed: int = 0,
        eval_every: int = 1,
        patience: int = 3,
        hard_negative_rate: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.config = FineTuneConfig(
            dim,
            kind,
            epochs,
            base_epochs,
            lr,
            weight_decay,
            batch_size,
            n_neg,
            seed,
            eval_every,
            patience,
            hard_negative_rate,
        )
        if self.config.kind not in ("mf", "lightgcn"):
            raise ValueError(f"FineTuneLearner trains 'mf' or 'lightgcn', not {self.config.kind!r}")
        self.member: Member | None = None
        self.blocks_seen = 0

    def continue_from(self, member: Member, blocks_seen: int) -> None:
        """Fine-tune ``member`` (moved to this learner's device) from now on, as if it had been
        learned from ``blocks_seen`` blocks (FT starting from a distilled student)."""
        if member.kind != self.config.kind:
            raise ValueError(f"a {self.config.kind!r} learner cannot continue a {member.kind!r}")
        self.member, self.blocks_seen = member.to(self.device), blocks_seen

    def learn_block(self, block: BlockData) -> BlockReport:
        started = time.perf_counter()
        block = block.to(self.device)
        cfg = self.config
        if self.member is None:
            self.member = build_member(
                cfg.kind, block.n_users, block.n_items, cfg.dim, cfg.seed, self.device
            )
            epochs = cfg.base_epochs if cfg.base_epochs is not None else cfg.epochs
        else:
            n_users = max(block.n_users, self.member.n_users)
            self.member.grow(n_users, max(block.n_items, self.member.n_items))
            epochs = cfg.epochs
        self.member.set_graph(block.train)
        result = self._fine_tune(block, epochs)
        self.blocks_seen += 1
        info = {
            "best_epoch": result.best_epoch,
            "best_valid_recall@20": result.best_score if math.isfinite(result.best_score) else None,
            "epochs_run": result.epochs_run,
            "n_train": len(block.train),
        }
        return BlockReport({"fine_tune": time.perf_counter() - started}, info)

    def _fine_tune(self, block: BlockData, epochs: int) -> FitResult:
        cfg, member = self.config, self.member
        train = block.train
        n_train, n_items = len(train), member.n_items
        users, items = train.users.long(), train.items.long()
        forbidden = forbidden_keys(n_items, user_item_lists(train, member.n_users), None)
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + block.index)
        optimizer = adam(member.parameters(), cfg.lr, cfg.weight_decay)

        hard = explicit_negatives(block)

        def train_epoch(epoch: int) -> float:
            member.train()
            negatives = sample_negatives(
                users, n_items, None, None, cfg.n_neg, generator, forbidden=forbidden
            )
            if hard is not None:
                negatives = mix_hard_negatives(
                    users, negatives, hard, cfg.hard_negative_rate, generator
                )
            order = randperm(n_train, generator, self.device)
            total = 0.0
            for start in range(0, n_train, cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                weights = None if train.weights is None else train.weights[batch]
                loss = member.bpr_loss(
                    users[batch], items[batch], negatives[batch], weights=weights
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            return total

        def validate() -> float:
            member.eval()
            scores = ranking_metrics(
                member_scorer(member), block.valid, [block.train, block.test], ks=(20,)
            )
            return scores["recall@20"]

        if n_train == 0:
            return FitResult(-float("inf"), -1, 0, False)
        has_valid = len(block.valid) > 0
        return fit(
            train_epoch,
            validate if has_valid else None,
            member,
            epochs,
            cfg.eval_every,
            cfg.patience,
            skip_unselectable=True,
        )

    def student(self) -> Embeddings:
        return exported(self.member)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "blocks_seen": self.blocks_seen,
            "member": None if self.member is None else to_device(self.member.state_dict(), "cpu"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = FineTuneConfig(**state["config"])
        self.blocks_seen = int(state["blocks_seen"])
        self.member = None
        if state["member"] is not None:
            cfg = self.config
            self.member = build_member(cfg.kind, 1, 1, cfg.dim, cfg.seed, self.device)
            self.member.load_state_dict(state["member"])
