"""Continual Collaborative Distillation (CCD, KDD 2024) as a ``models.api.BlockLearner``.

Block 0: train the base teacher members, rank-ensemble them into T_0, distil the student D_0
(Stage 1); D_0 is also the deployed student. Block k >= 1:
    Stage 2  proxies S, P <- EMA(D_{k-1}); CL_k <- D_{k-1} + entity init + BPR + proxy replay
             (CL_k is the deployed student, ``student()``);
    Stage 3  each member <- LWC-KD/PIW (or VAE KL) + BPR + replay of S, P, CL_k; T_k <- ensemble;
    Stage 1  D_k <- fresh student distilled from T_k on D_k.
With ``teacher_every = n`` Stages 3 and 1 run on every n-th block only (n = 1 is the paper): the
teacher then trains on all train data since its last update, and in between the next Stage 2
starts from the latest continual student (proxies are EMA-updated only when a new distilled
student exists).

Every hyper-parameter and every code-versus-paper choice of ccd-method.md §8 is a field of
``CCDConfig``; defaults follow the method doc (the official code unless §8 recommends otherwise).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import Tensor

from models.api import BlockData, BlockReport, Embeddings, Interactions
from models.ccd.config import CCDConfig
from models.ccd.stage1_distill import KDResult, distill
from models.ccd.stage2_student import update_student
from models.ccd.stage3_teacher import (
    OldStructure,
    ReplaySource,
    TeacherContext,
    TeacherWindow,
    ensemble_scorer,
    merge_windows,
    train_base_member,
    update_member,
)
from models.data import user_item_lists
from models.device import to_device
from models.members import IALS, Member, build_member, exported
from models.metrics import SizedScorer, member_scorer, union_pairs
from models.proxies import update_proxy
from models.replay import concat_lists, top_items_padded
from models.training import FitResult

log = logging.getLogger("ccd.models")


# -- member (de)serialisation: primitives and tensors only ------------------------------------
def member_state(member: Member | None) -> dict[str, Any] | None:
    if member is None:
        return None
    return {
        "kind": member.kind,
        "dim": member.dim,
        "n_users": member.n_users,
        "n_items": member.n_items,
        "n_layers": getattr(member, "n_layers", 0),
        "uniform_noise": getattr(member, "uniform_noise", True),
        "state": to_device(member.state_dict(), "cpu"),
    }


def member_from_state(
    state: dict[str, Any] | None, device: torch.device | str = "cpu"
) -> Member | None:
    if state is None:
        return None
    kwargs: dict[str, Any] = {}
    if state["kind"] == "lightgcn":
        kwargs["n_layers"] = state["n_layers"]
    if state["kind"] == "vae":
        kwargs["uniform_noise"] = state["uniform_noise"]
    member = build_member(
        state["kind"], state["n_users"], state["n_items"], state["dim"], device=device, **kwargs
    )
    member.load_state_dict(state["state"])
    member.eval()
    return member


def block_state(block: BlockData) -> dict[str, Any]:
    return {
        "index": block.index,
        "n_users": block.n_users,
        "n_items": block.n_items,
        "train": block.train.state_dict(),
        "valid": block.valid.state_dict(),
        "test": block.test.state_dict(),
        "negatives": block.negatives.state_dict(),
    }


def block_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> BlockData:
    return BlockData(
        state["index"],
        state["n_users"],
        state["n_items"],
        Interactions.from_state(state["train"]),
        Interactions.from_state(state["valid"]),
        Interactions.from_state(state["test"]),
        Interactions.from_state(state.get("negatives") or Interactions.empty("cpu").state_dict()),
    ).to(device)


# -- shared by CCD and the distilled baselines --------------------------------------------------
def build_teachers(
    cfg: CCDConfig, n_users: int, n_items: int, device: torch.device | str = "cpu"
) -> list[Member]:
    members = []
    for kind, seed in zip(cfg.teacher_kinds, cfg.member_seeds, strict=True):
        kwargs: dict[str, Any] = {}
        size = n_items
        if kind == "lightgcn":
            kwargs["n_layers"] = cfg.teacher_layers
        if kind == "vae":
            kwargs["uniform_noise"] = cfg.vae_uniform_noise
            size = max(cfg.vae_item_capacity or n_items, n_items)
        members.append(build_member(kind, n_users, size, cfg.teacher_dim, seed, device, **kwargs))
    return members


def train_base_teachers(cfg: CCDConfig, block: BlockData) -> tuple[list[Member], dict[str, Any]]:
    """The base teacher members trained on block 0 (on the block's device), and their best valid
    Recall@20."""
    members = build_teachers(cfg, block.n_users, block.n_items, block.device)
    scores = {}
    for i, member in enumerate(members):
        started = time.perf_counter()
        result = train_base_member(member, block, cfg, seed=cfg.seed * 1000 + i)
        scores[f"{member.kind}_{i}"] = best_score(result)
        log.info(
            "base teacher %d/%d (%s): %d epochs in %.0f s, best valid recall@20 %s at epoch %d",
            i + 1,
            len(members),
            member.kind,
            result.epochs_run,
            time.perf_counter() - started,
            scores[f"{member.kind}_{i}"],
            result.best_epoch,
        )
    return members, scores


def bootstrap(
    cfg: CCDConfig, block: BlockData, seed: int
) -> tuple[list[Member], KDResult, BlockReport]:
    """Block 0: base teachers, their ensemble T_0 and the distilled student D_0."""
    times: dict[str, float] = {}
    teachers, teacher_scores = _timed(times, "base_teachers", train_base_teachers, cfg, block)
    teacher = ensemble_scorer(teachers, block.n_items, cfg.ensemble_power)
    kd = _timed(times, "distill", distill, teacher, block, cfg, None, seed + cfg.student_seed)
    info = {
        "teacher_updated": True,
        "base_teacher_valid_recall@20": teacher_scores,
        "distill_valid_recall@20": best_score(kd.fit),
        "distill_epochs": [kd.fit.best_epoch, kd.fit.epochs_run],
    }
    return teachers, kd, BlockReport(times, info)


def distill_block(window: BlockData, history: Interactions, cfg: CCDConfig) -> BlockData:
    """The data Stage 1 distils on: the teacher's window, or every train pair so far."""
    if cfg.distill_data == "window":
        return window
    return dataclasses.replace(window, train=history)


def best_score(result: FitResult) -> float | None:
    """The best validation score, or None when nothing was validated (JSON-safe)."""
    return result.best_score if math.isfinite(result.best_score) else None


def _timed(times: dict[str, float], name: str, fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    times[name] = times.get(name, 0.0) + time.perf_counter() - started
    return out


class CCDLearner:
    """CCD over a stream of blocks (implements ``models.api.BlockLearner``).

    Besides ``student()`` (the deployed continual student CL_k; D_0 after block 0) it exposes
    ``teacher_scorer()`` (the ensemble T) and ``distilled_student()`` (the latest D).

    ``device`` ("cpu" or e.g. "cuda") is where the members train and every block update runs
    (``models.device``); it is a placement, not a hyper-parameter: it is not in ``config`` nor
    in ``state_dict()`` (CPU tensors), and ``load_state_dict`` puts a state on this learner's
    device, wherever it was written. ``student()`` is on the CPU.
    """

    def __init__(
        self, config: CCDConfig | None = None, device: torch.device | str = "cpu", **overrides: Any
    ) -> None:
        config = config or CCDConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.device = torch.device(device)
        self.teachers: list[Member] = []
        self.teacher_window: TeacherWindow | None = None  # what the teachers last trained on
        self.teacher_top: Tensor | None = None  # T's top-K without its train items
        self.pending: list[BlockData] = []  # blocks since the last teacher update
        self.distilled: Member | None = None  # the latest D
        self.current: Member | None = None  # the deployed student
        self.stability: Member | None = None
        self.plasticity: Member | None = None
        self.base_is_distilled = False  # the next Stage 2 starts from a fresh D (else from CL)
        self.proxies_blended = False  # the proxies went through at least one EMA update
        # Moved to the device with each block (constructing allocates nothing there).
        self.prev_train = Interactions.empty("cpu")
        self.history = Interactions.empty("cpu")  # every distinct train pair so far
        self.negatives = Interactions.empty("cpu")  # every distinct explicit negative pair so far
        self.blocks_seen = 0
        self.teacher_updates = 0

    # -- the BlockLearner verbs --------------------------------------------------------------
    def learn_block(self, block: BlockData) -> BlockReport:
        block = block.to(self.device)
        self.prev_train = self.prev_train.to(self.device)
        self.history = self.history.to(self.device)
        self.negatives = self.negatives.to(self.device)
        cfg = self.config.for_block(self.blocks_seen)
        seed = cfg.seed * 100_003 + self.blocks_seen * 101
        if cfg.keeps_history:
            self.history = union_pairs([self.history, block.train], block.n_items)
        if len(block.negatives) or len(self.negatives):
            self.negatives = union_pairs([self.negatives, block.negatives], block.n_items)
        # Components drawing from torch's global RNG (Mult-VAE noise, drawn on the CPU) get a
        # per-block seed without disturbing the caller's RNG state (manual_seed also seeds
        # CUDA's, so the learner's GPU is forked too).
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            if not self.teachers:
                report = self._bootstrap(block, cfg, seed)
            else:
                report = self._continual_block(block, cfg, seed)
        self.prev_train = block.train
        self.blocks_seen += 1
        report.info["block"] = self.blocks_seen - 1
        return report

    def student(self) -> Embeddings:
        return exported(self.current)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [torch.cuda.current_device() if self.device.index is None else self.device.index]

    def teacher_scorer(self) -> SizedScorer:
        """The current teacher ensemble T as a scorer (B,) -> (B, I_T)."""
        if not self.teachers or self.teacher_window is None:
            raise RuntimeError("no block learned yet")
        return ensemble_scorer(
            self.teachers, self.teacher_window.block.n_items, self.config.ensemble_power
        )

    def distilled_student(self) -> Embeddings:
        """The latest student distilled from the teacher (D_k), before any continual update (on
        the CPU)."""
        return exported(self.distilled)

    # -- block 0 -----------------------------------------------------------------------------
    def _bootstrap(self, block: BlockData, cfg: CCDConfig, seed: int) -> BlockReport:
        self.teachers, kd, report = bootstrap(cfg, block, seed)
        self._adopt_distilled(kd, block)
        self.current = kd.student
        return report

    def _adopt_distilled(self, kd: KDResult, window: BlockData) -> None:
        self.distilled = kd.student
        self.teacher_top = kd.lists.top_items
        self.teacher_window = TeacherWindow.of(window)
        self.base_is_distilled = True
        self.pending = []

    # -- block k >= 1 ------------------------------------------------------------------------
    def _refresh_proxies(self, start: Member, cfg: CCDConfig) -> None:
        if self.stability is None:
            self.stability = update_proxy(None, start, cfg.stability_weight)
            self.plasticity = self.stability
        elif self.base_is_distilled:
            self.stability = update_proxy(self.stability, start, cfg.stability_weight)
            self.plasticity = update_proxy(self.plasticity, start, cfg.plasticity_weight)
            self.proxies_blended = True

    def _continual_block(self, block: BlockData, cfg: CCDConfig, seed: int) -> BlockReport:
        times: dict[str, float] = {}
        start = self.distilled if self.base_is_distilled else self.current
        _timed(times, "proxies", self._refresh_proxies, start, cfg)
        self.base_is_distilled = False
        use_p = self.proxies_blended and cfg.use_plasticity
        plasticity = self.plasticity if use_p else None
        stage2 = _timed(
            times,
            "student_update",
            update_student,
            start,
            self.stability,
            plasticity,
            self.teacher_top,
            self.prev_train,
            block,
            cfg,
            seed,
            self.proxies_blended,
        )
        self.current = stage2.student
        self.pending.append(block)
        info: dict[str, Any] = {
            "student_valid_recall@20": best_score(stage2.fit),
            "student_best_epoch": stage2.fit.best_epoch,
            "student_replay_size": stage2.replay_size,
        }
        update_teacher = self.blocks_seen % cfg.teacher_every == 0
        info["teacher_updated"] = update_teacher
        if update_teacher:
            info.update(self._teacher_cycle(block, cfg, seed, times, use_p))
        return BlockReport(times, info)

    def _teacher_cycle(
        self, block: BlockData, cfg: CCDConfig, seed: int, times: dict[str, float], use_p: bool
    ) -> dict[str, Any]:
        window = merge_windows(self.pending)
        assert self.teacher_window is not None and self.current is not None
        n_users = window.n_users
        stage2_filters = [
            user_item_lists(self.prev_train, n_users),
            user_item_lists(block.train, n_users),
        ]
        proxies = [(self.stability, cfg.teacher_s_samples)]
        if use_p:
            proxies.append((self.plasticity, cfg.teacher_p_samples))
        sources = [ReplaySource(member_scorer(m), n, stage2_filters) for m, n in proxies]
        sources.append(ReplaySource(member_scorer(self.current), cfg.teacher_cl_samples))
        k = cfg.exclusion_k
        exclusion = concat_lists(
            self.teacher_top,
            *[
                top_items_padded(s.scorer, s.scorer.n_users, n_users, k, s.filters, cfg.chunk)
                for s in sources
            ],
        )
        started = time.perf_counter()
        # The old rating matrix and UU / II graphs feed LWC-KD; closed-form members need none.
        old = None
        if any(not isinstance(m, IALS) for m in self.teachers):
            old = OldStructure.build(self.teacher_window, n_users, window.n_items, cfg)
        ctx = TeacherContext(
            TeacherWindow.of(window),
            old,
            self.teacher_window,
            sources,
            exclusion,
            self.history,
            self.negatives,
        )
        times["teacher_graphs"] = time.perf_counter() - started
        scores = {}
        for i, member in enumerate(self.teachers):
            result = _timed(
                times, "teacher_update", update_member, member, ctx, cfg, seed + 7 * i + 3
            )
            scores[f"{member.kind}_{i}"] = best_score(result)
        self.teacher_updates += 1
        # Stage 1 on the window: exclude S / P / CL_k's top-K without the window's train items.
        kd_block = distill_block(window, self.history, cfg)
        window_filter = [user_item_lists(kd_block.train, n_users)]
        kd_exclusion = concat_lists(
            *[
                top_items_padded(s.scorer, s.scorer.n_users, n_users, k, window_filter, cfg.chunk)
                for s in sources
            ]
        )
        teacher = ensemble_scorer(self.teachers, window.n_items, cfg.ensemble_power)
        start = self.distilled if cfg.distill_init == "previous" else None
        kd = _timed(
            times,
            "distill",
            distill,
            teacher,
            kd_block,
            cfg,
            kd_exclusion,
            seed + cfg.student_seed,
            start=start,
        )
        self._adopt_distilled(kd, window)
        return {
            "teacher_valid_recall@20": scores,
            "distill_valid_recall@20": best_score(kd.fit),
            "distill_epochs": [kd.fit.best_epoch, kd.fit.epochs_run],  # best, run
        }

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "counters": {
                "blocks_seen": self.blocks_seen,
                "teacher_updates": self.teacher_updates,
                "base_is_distilled": self.base_is_distilled,
                "proxies_blended": self.proxies_blended,
                "plasticity_is_stability": self.plasticity is self.stability,
            },
            "teachers": [member_state(m) for m in self.teachers],
            "distilled": member_state(self.distilled),
            "current": member_state(self.current),
            "stability": member_state(self.stability),
            "plasticity": member_state(self.plasticity),
            "teacher_top": None if self.teacher_top is None else self.teacher_top.cpu(),
            "teacher_window": None
            if self.teacher_window is None
            else block_state(self.teacher_window.block),
            "pending": [block_state(b) for b in self.pending],
            "prev_train": self.prev_train.state_dict(),
            "history": self.history.state_dict(),
            "negatives": self.negatives.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = CCDConfig.from_dict(state["config"])
        counters = state["counters"]
        self.blocks_seen = int(counters["blocks_seen"])
        self.teacher_updates = int(counters["teacher_updates"])
        self.base_is_distilled = bool(counters["base_is_distilled"])
        self.proxies_blended = bool(counters["proxies_blended"])
        device = self.device
        self.teachers = [member_from_state(m, device) for m in state["teachers"]]
        self.distilled = member_from_state(state["distilled"], device)
        self.current = member_from_state(state["current"], device)
        self.stability = member_from_state(state["stability"], device)
        self.plasticity = (
            self.stability
            if counters["plasticity_is_stability"]
            else member_from_state(state["plasticity"], device)
        )
        top = state["teacher_top"]
        self.teacher_top = None if top is None else top.to(device)
        window = state["teacher_window"]
        self.teacher_window = (
            None if window is None else TeacherWindow.of(block_from_state(window, device))
        )
        self.pending = [block_from_state(b, device) for b in state["pending"]]
        self.prev_train = Interactions.from_state(state["prev_train"]).to(device)
        # Checkpoints written before the field ran settings that do not read it.
        history = state.get("history")
        self.history = (
            Interactions.empty(device)
            if history is None
            else Interactions.from_state(history).to(device)
        )
        negatives = state.get("negatives")
        self.negatives = (
            Interactions.empty(device)
            if negatives is None
            else Interactions.from_state(negatives).to(device)
        )
