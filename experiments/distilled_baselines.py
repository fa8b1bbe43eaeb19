"""Baselines that need the teacher and distillation (ccd-method.md §4.4), as BlockLearners.

- ``FrozenStudentLearner`` ("frozen"): block 0 as in CCD (base teachers, ensemble, Stage 1 KD);
  the distilled student D_0 is then served unchanged on every later block.
- ``TeacherFineTuneLearner`` ("teacher_ft"): block 0 as in CCD; on every later block each teacher
  member is fine-tuned on the block with plain BPR (new rows N(0, 0.01), no LWC-KD/PIW, no
  replay, no student-side knowledge), re-ensembled, and a fresh student is distilled from it
  (Stage 1 without exclusion lists): periodic re-distillation without collaboration.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from models.api import BlockData, BlockReport, Embeddings, Interactions
from models.ccd import CCDConfig
from models.ccd.learner import (
    best_score,
    block_from_state,
    block_state,
    bootstrap,
    distill_block,
    member_from_state,
    member_state,
)
from models.ccd.stage1_distill import distill
from models.ccd.stage3_teacher import TeacherContext, TeacherWindow, ensemble_scorer, update_member
from models.members import Member, exported
from models.metrics import SizedScorer, union_pairs


class FrozenStudentLearner:
    """The one-time-distilled student, never updated after block 0."""

    def __init__(self, config: CCDConfig | None = None, **overrides: Any) -> None:
        config = config or CCDConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.member: Member | None = None
        self.blocks_seen = 0

    def learn_block(self, block: BlockData) -> BlockReport:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 100_003 + self.blocks_seen * 101)
            return self._learn_block(block)

    def _learn_block(self, block: BlockData) -> BlockReport:
        if self.member is None:
            _, kd, report = bootstrap(self.config, block, self.config.seed * 100_003)
            self.member = kd.student  # the teachers are not needed any more
        else:
            report = BlockReport({}, {"teacher_updated": False, "frozen": True})
        report.info["block"] = self.blocks_seen
        self.blocks_seen += 1
        return report

    def student(self) -> Embeddings:
        return exported(self.member)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "blocks_seen": self.blocks_seen,
            "member": member_state(self.member),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = CCDConfig.from_dict(state["config"])
        self.blocks_seen = int(state["blocks_seen"])
        self.member = member_from_state(state["member"])


class TeacherFineTuneLearner:
    """Teacher members fine-tuned per block, then a fresh student distilled from them."""

    def __init__(self, config: CCDConfig | None = None, **overrides: Any) -> None:
        config = config or CCDConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.teachers: list[Member] = []
        self.member: Member | None = None
        self.window: BlockData | None = None
        self.history = Interactions.empty()  # every distinct train pair so far
        self.blocks_seen = 0
        # False: only the teachers are updated (a replay that needs this teacher but not its
        # re-distilled student saves a distillation per block).
        self.distills = True

    @classmethod
    def after_base(
        cls, config: CCDConfig, teachers: list[Member], student: Member, block0: BlockData
    ) -> TeacherFineTuneLearner:
        """The learner as if it had learned ``block0`` into these base teachers and student
        (the replay runner forks one shared base training into each method)."""
        learner = cls(config)
        learner.teachers, learner.member, learner.window = teachers, student, block0
        if config.keeps_history:
            learner.history = union_pairs([block0.train], block0.n_items)
        learner.blocks_seen = 1
        return learner

    def learn_block(self, block: BlockData) -> BlockReport:
        cfg = self.config.for_block(self.blocks_seen)
        seed = cfg.seed * 100_003 + self.blocks_seen * 101
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._learn_block(block, cfg, seed)

    def _learn_block(self, block: BlockData, cfg: CCDConfig, seed: int) -> BlockReport:
        if cfg.keeps_history:
            self.history = union_pairs([self.history, block.train], block.n_items)
        if not self.teachers:
            self.teachers, kd, report = bootstrap(cfg, block, seed)
        else:
            times: dict[str, float] = {}
            ctx = TeacherContext(TeacherWindow.of(block), None, None, [], None, self.history)
            started = time.perf_counter()
            scores = {}
            for i, member in enumerate(self.teachers):
                result = update_member(member, ctx, cfg, seed + 7 * i + 3, continual=False)
                scores[f"{member.kind}_{i}"] = best_score(result)
            times["teacher_update"] = time.perf_counter() - started
            info = {"teacher_updated": True, "teacher_valid_recall@20": scores}
            kd = None
            if self.distills:
                started = time.perf_counter()
                teacher = ensemble_scorer(self.teachers, block.n_items, cfg.ensemble_power)
                kd_block = distill_block(block, self.history, cfg)
                kd = distill(teacher, kd_block, cfg, None, seed + cfg.student_seed)
                times["distill"] = time.perf_counter() - started
                info["distill_valid_recall@20"] = best_score(kd.fit)
            report = BlockReport(times, info)
        if kd is not None:
            self.member = kd.student
        self.window = block
        report.info["block"] = self.blocks_seen
        self.blocks_seen += 1
        return report

    def student(self) -> Embeddings:
        return exported(self.member)

    def teacher_scorer(self) -> SizedScorer:
        if not self.teachers or self.window is None:
            raise RuntimeError("no block learned yet")
        return ensemble_scorer(self.teachers, self.window.n_items, self.config.ensemble_power)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "blocks_seen": self.blocks_seen,
            "teachers": [member_state(m) for m in self.teachers],
            "member": member_state(self.member),
            "window": None if self.window is None else block_state(self.window),
            "history": self.history.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = CCDConfig.from_dict(state["config"])
        self.blocks_seen = int(state["blocks_seen"])
        self.teachers = [member_from_state(m) for m in state["teachers"]]
        self.member = member_from_state(state["member"])
        self.window = None if state["window"] is None else block_from_state(state["window"])
        history = state.get("history")  # absent from checkpoints of settings that do not read it
        self.history = Interactions.empty() if history is None else Interactions.from_state(history)
