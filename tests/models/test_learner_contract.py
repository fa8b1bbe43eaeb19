"""The ``BlockLearner`` contract (models/api.py), checked the same way on every learner.

Each learner comes from a tiny-config factory and learns the first blocks of the synthetic
stream of tests/models/test_ccd.py. A new learner joins by adding one factory to ``FACTORIES``.
The contract: ``student()`` raises before block 0; the student grows to each block's
``n_users`` / ``n_items``; ``state_dict()`` survives ``torch.save`` and a ``weights_only=True``
load; a learner restored from it and the original give equal students after the next block;
``stage_seconds`` are finite.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from experiments.distilled_baselines import FrozenStudentLearner, TeacherFineTuneLearner
from models.als import ALSLearner
from models.api import BlockLearner, BlockReport, Embeddings
from models.baselines import FineTuneLearner
from models.ccd import CCDConfig, CCDLearner
from models.members import IALSParams
from tests.models.helpers import synthetic_stream

# The smallest CCD that runs every stage: one MF teacher, few epochs, small KD samples.
TINY_CCD = dict(
    teacher_kinds=("mf",),
    teacher_dim=8,
    student_dim=4,
    base_epochs=2,
    kd_epochs=2,
    student_epochs=2,
    teacher_epochs=2,
    kd_uninteresting_items=30,
    kd_uninteresting_users=30,
)


def tiny_ccd(variant: str) -> CCDConfig:
    """The "stream" preset of ``variant`` shrunk to ``TINY_CCD`` (the best variant keeps its
    iALS teacher, with few sweeps)."""
    best = {"teacher_kinds": ("ials",), "teacher_seeds": (0,), "ials_iterations": 2}
    best = best if variant == "best" else {}
    return CCDConfig.preset("stream", variant, **(TINY_CCD | best))


FACTORIES: dict[str, Callable[[], BlockLearner]] = {
    "ccd-paper": lambda: CCDLearner(tiny_ccd("paper")),
    "ccd-best": lambda: CCDLearner(tiny_ccd("best")),
    "bpr": lambda: FineTuneLearner(dim=4, epochs=2, eval_every=1, patience=1),
    "als": lambda: ALSLearner(dim=4, params=IALSParams(iterations=2)),
    "teacher_ft": lambda: TeacherFineTuneLearner(tiny_ccd("paper")),
    "frozen": lambda: FrozenStudentLearner(tiny_ccd("paper")),
}
# Learners whose student keeps block 0's sizes by definition: the paper's "frozen" baseline
# serves D_0 unchanged (evaluation then cannot rank new users and items; padding them would
# give them scores the baseline never learned).
FIXED_SIZE = {"frozen"}


@dataclass
class ContractRun:
    """What one learner did on the stream: blocks 0..n-2 by the original, then the last block by
    both the original and a learner restored from the original's checkpoint."""

    name: str
    before_first_block: Exception | None
    students: list[Embeddings]  # the original's, after each block
    reports: list[BlockReport]
    state: dict[str, Any]  # the checkpoint after block n-2, as loaded with weights_only=True
    restored_before: Embeddings  # the restored learner's student, before the last block
    restored_after: Embeddings  # ... and after it


def weights_only_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def run(request: pytest.FixtureRequest, stream) -> ContractRun:
    factory = FACTORIES[request.param]
    learner = factory()
    try:
        learner.student()
        before_first_block = None
    except Exception as error:  # the type is checked by a test, not here
        before_first_block = error
    students, reports = [], []
    for block in stream[:-1]:
        reports.append(learner.learn_block(block))
        students.append(learner.student())
    state = weights_only_round_trip(learner.state_dict())
    restored = factory()
    restored.load_state_dict(state)
    restored_before = restored.student()
    reports.append(learner.learn_block(stream[-1]))
    students.append(learner.student())
    restored.learn_block(stream[-1])
    return ContractRun(
        request.param,
        before_first_block,
        students,
        reports,
        state,
        restored_before,
        restored.student(),
    )


def test_student_before_the_first_block_raises(run: ContractRun) -> None:
    assert isinstance(run.before_first_block, RuntimeError)


def test_student_grows_to_each_blocks_id_spaces(run: ContractRun, stream) -> None:
    for block, student in zip(stream, run.students, strict=True):
        sizes = stream[0] if run.name in FIXED_SIZE else block
        assert student.users.shape[0] == sizes.n_users, block.index
        assert student.items.shape[0] == sizes.n_items, block.index
        assert student.users.shape[1] == student.items.shape[1]
        assert student.users.dtype == student.items.dtype == torch.float32


def test_checkpoint_loads_with_weights_only_and_restores_the_student(run: ContractRun) -> None:
    assert isinstance(run.state, dict)
    assert torch.equal(run.restored_before.users, run.students[-2].users)
    assert torch.equal(run.restored_before.items, run.students[-2].items)


def test_restored_and_original_learn_the_next_block_alike(run: ContractRun) -> None:
    assert torch.equal(run.restored_after.users, run.students[-1].users)
    assert torch.equal(run.restored_after.items, run.students[-1].items)


def test_stage_seconds_are_finite(run: ContractRun) -> None:
    for report in run.reports:
        assert all(math.isfinite(s) and s >= 0 for s in report.stage_seconds.values()), report
