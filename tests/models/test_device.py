"""The learners' ``device`` argument (models/device.py), checked without a GPU.

A tensor made without ``device=`` inside a block update is the bug a GPU run would hit. Here every
learner runs on ``device="cpu"`` while torch's default device is "meta" (tensors without data):
any tensor created without an explicit device lands on meta, and then mixing it with the CPU
tensors raises, ``.item()`` raises, or a draw silently skips its generator so that the student
differs from the plain run's. The students must be bit-identical. Where a GPU exists, the same
small runs also go to CUDA and are compared with the CPU's to a tolerance.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

from models.als import ALSLearner
from models.api import BlockData, BlockLearner, Embeddings, Interactions
from models.baselines import FineTuneLearner
from models.ccd import CCDConfig, CCDLearner
from models.members import IALSParams
from tests.models.helpers import held_out_recall, synthetic_stream

# Every stage and member kind once, in few epochs: MF, LightGCN and Mult-VAE teachers (LWC-KD,
# PIW, VAE retention), a LightGCN student, the mask and list forms of Stage 1's samples, and
# the "best" variant's iALS teacher.
SMALL = dict(
    teacher_dim=8,
    student_dim=4,
    base_epochs=2,
    kd_epochs=2,
    student_epochs=2,
    teacher_epochs=2,
    kd_uninteresting_items=30,
    kd_uninteresting_users=10,
)


def ccd_paper(stream: list[BlockData]) -> CCDConfig:
    kinds = dict(teacher_kinds=("mf", "lightgcn", "vae"), vae_item_capacity=stream[-1].n_items)
    return CCDConfig.preset("stream", "paper", **(SMALL | kinds))


def ccd_best(stream: list[BlockData]) -> CCDConfig:
    ials = dict(teacher_kinds=("ials",), teacher_seeds=(0,), ials_iterations=2)
    return CCDConfig.preset("stream", "best", **(SMALL | ials))


Factory = Callable[[list[BlockData], str], BlockLearner]
FACTORIES: dict[str, Factory] = {
    "ccd-paper": lambda stream, device: CCDLearner(ccd_paper(stream), device=device),
    "ccd-best": lambda stream, device: CCDLearner(ccd_best(stream), device=device),
    "bpr": lambda stream, device: FineTuneLearner(
        dim=4, kind="lightgcn", epochs=2, patience=1, device=device
    ),
    "als": lambda stream, device: ALSLearner(dim=4, params=IALSParams(iterations=2), device=device),
}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def stream() -> list[BlockData]:
    """The synthetic stream with typed feedback: weighted train pairs and explicit negatives
    (hard negatives, iALS negative confidence), so those paths run too."""
    g = torch.Generator().manual_seed(5)
    blocks = []
    for block in synthetic_stream():
        train = block.train
        weights = 1.0 + 3.0 * (torch.rand(len(train), generator=g) < 0.3).float()
        users = torch.randint(0, block.n_users, (40,), generator=g)
        items = torch.randint(0, block.n_items, (40,), generator=g)
        negatives = Interactions(users, items, torch.full((40,), 2.0))
        blocks.append(
            dataclasses.replace(
                block,
                train=Interactions(train.users, train.items, weights),
                negatives=negatives,
            )
        )
    return blocks


def weights_only_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in tensors_in(item)]
    return []


def run(
    name: str, stream: list[BlockData], device: str, default_device: str | None = None
) -> tuple[list[Embeddings], dict[str, Any], Embeddings]:
    """Blocks 0 and 1 by one learner, then block 2 by a second one restored from the first's
    checkpoint; every learner call under ``torch.device(default_device)`` if given. Returns
    the students after blocks 0 and 1, the checkpoint and the restored learner's student after
    block 2."""
    learner = FACTORIES[name](stream, device)
    students = []
    with torch.device(default_device) if default_device else _nothing():
        for block in stream[:2]:
            learner.learn_block(block)
            students.append(learner.student())
        state = weights_only_round_trip(learner.state_dict())
        restored = FACTORIES[name](stream, device)
        restored.load_state_dict(state)
        restored.learn_block(stream[2])
        after = restored.student()
    return students, state, after


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def cpu_runs(stream) -> dict[str, tuple[list[Embeddings], dict[str, Any], Embeddings]]:
    """Each learner with ``device="cpu"`` passed explicitly."""
    return {name: run(name, stream, "cpu") for name in FACTORIES}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_explicit_cpu_learns_blocks_and_checkpoints_on_the_cpu(name: str, cpu_runs, stream):
    students, state, after = cpu_runs[name]
    for student, block in zip(students + [after], stream, strict=True):
        assert student.users.device.type == student.items.device.type == "cpu"
        assert student.users.shape[0] == block.n_users
    assert all(t.device.type == "cpu" for t in tensors_in(state))
    assert "device" not in (state.get("config") or {})  # a placement, not a hyper-parameter
    assert held_out_recall(after, stream[2]) > 0


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_tensor_is_made_off_the_learners_device(name: str, cpu_runs, stream):
    """Under a "meta" default device a tensor made without ``device=`` cannot compute with the
    learner's CPU tensors: the run raises or its students differ from the plain run's."""
    students, _, after = cpu_runs[name]
    meta_students, _, meta_after = run(name, stream, "cpu", default_device="meta")
    for expected, got in zip(students + [after], meta_students + [meta_after], strict=True):
        assert torch.equal(expected.users, got.users)
        assert torch.equal(expected.items, got.items)


def test_the_meta_trick_catches_a_tensor_made_without_a_device() -> None:
    """The check above can fail: one ``torch.arange`` without ``device=`` is enough."""
    table = torch.randn(4, 2, device="cpu")
    with torch.device("meta"), pytest.raises(RuntimeError):
        (table[torch.arange(2, device="cpu")] + torch.ones(2, 2)).sum().item()


def test_device_is_not_a_config_field() -> None:
    assert "device" not in CCDConfig().to_dict()
    assert CCDLearner(device="cpu").device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_cuda_learns_like_the_cpu(name: str, cpu_runs, stream):
    """The same draws (CPU generators) on CUDA: equal sizes and held-out recall close to the
    CPU's (float sums differ in order, so training drifts a little)."""
    students, state, after = cpu_runs[name]
    cuda_students, cuda_state, cuda_after = run(name, stream, "cuda")
    pairs = zip(students + [after], cuda_students + [cuda_after], strict=True)
    for cpu_student, cuda_student in pairs:
        assert cuda_student.users.device.type == "cpu"
        assert cuda_student.users.shape == cpu_student.users.shape
    assert all(t.device.type == "cpu" for t in tensors_in(cuda_state))
    cpu_recall = held_out_recall(after, stream[2])
    cuda_recall = held_out_recall(cuda_after, stream[2])
    assert abs(cpu_recall - cuda_recall) < 0.05, (cpu_recall, cuda_recall)
    # A checkpoint written on the GPU restores on the CPU and serves the same student.
    restored = FACTORIES[name](stream, "cpu")
    restored.load_state_dict(cuda_state)
    assert torch.allclose(restored.student().users, cuda_students[-1].users)
