"""Learner states written before the models/ layout move (tests/fixtures/before_layout_move/,
commit 046df2e: each learner after two blocks of tests.models.test_ccd.synthetic_stream) still
restore with ``weights_only=True``, give the same student, and learn the next block.

A trainer checkpoint (trainer/checkpoint.py) holds exactly these ``state_dict()``s, so this is
what lets a streaming trainer resume across an upgrade that moves code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.als import ALSLearner
from models.api import BlockLearner
from models.baselines import FineTuneLearner
from models.ccd import CCDLearner
from tests.models.helpers import synthetic_stream

FIXTURES = Path(__file__).parents[1] / "fixtures" / "before_layout_move"

NEW_LEARNER: dict[str, Callable[[], BlockLearner]] = {
    "ccd_paper": CCDLearner,
    "ccd_best": CCDLearner,
    "als": ALSLearner,
    "bpr": FineTuneLearner,
}


@pytest.mark.parametrize("name", sorted(NEW_LEARNER))
def test_state_from_before_the_move_restores_and_learns_on(name: str) -> None:
    torch.set_num_threads(1)
    saved = torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)
    learner = NEW_LEARNER[name]()
    learner.load_state_dict(saved["state"])
    student = learner.student()
    assert torch.equal(student.users, saved["student_users"])
    assert torch.equal(student.items, saved["student_items"])
    third = synthetic_stream()[2]
    learner.learn_block(third)
    assert learner.student().users.shape[0] == third.n_users
