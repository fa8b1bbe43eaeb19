"""trainer/device.py and its plumbing: CCD_DEVICE resolved, cuda refused without a GPU (one line,
exit 2 from `ccd train`), every learner built on the device it resolves to (ccd, bpr, als take
one); nothing here needs a GPU (tests/models/test_device.py checks the learners' device use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contracts.settings import Settings
from trainer.device import DeviceUnavailable, learner_device, resolve_device
from trainer.process import build_learner

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("requested", "cuda", "expected"),
    [("cpu", False, "cpu"), ("cpu", True, "cpu"), ("auto", False, "cpu"), ("auto", True, "cuda")],
)
def test_resolve_device(requested: str, cuda: bool, expected: str) -> None:
    assert resolve_device(requested, cuda) == expected


def test_cuda_without_a_gpu_is_refused_naming_the_variable() -> None:
    with pytest.raises(DeviceUnavailable, match="CCD_DEVICE=cuda but torch sees no CUDA GPU"):
        resolve_device("cuda", cuda_available=False)


def test_a_learner_without_a_device_argument_cannot_be_sent_to_cuda() -> None:
    assert learner_device("cpu", accepts_device=False, learner="other") is None
    with pytest.raises(DeviceUnavailable, match="learner 'other' cannot run on cuda"):
        learner_device("cuda", accepts_device=False, learner="other")
    assert learner_device("cuda", accepts_device=True, learner="bpr") == "cuda"


@pytest.mark.parametrize("learner", ["ccd", "bpr", "als"])
def test_every_trainer_learner_takes_a_device(learner: str) -> None:
    built, name = build_learner(Settings(learner=learner, device="cpu"))
    assert name == learner
    assert built.device == torch.device("cpu")


def test_the_default_is_cpu() -> None:
    assert Settings().device == "cpu"


@pytest.mark.parametrize("learner", ["ccd", "bpr", "als"])
def test_build_learner_refuses_cuda_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, learner: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="CCD_DEVICE=cuda"):
        build_learner(Settings(learner=learner, device="cuda"))
    built, name = build_learner(Settings(learner=learner, device="auto"))
    assert name == learner
    assert built.device == torch.device("cpu")


@pytest.mark.parametrize("learner", ["ccd", "bpr", "als"])
def test_auto_on_a_gpu_machine_builds_the_learner_on_cuda(
    monkeypatch: pytest.MonkeyPatch, learner: str
) -> None:
    """Building allocates nothing on the device, so this runs without a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    built, _ = build_learner(Settings(learner=learner, device="auto"))
    assert built.device == torch.device("cuda")


def test_ccd_train_with_cuda_and_no_gpu_exits_2_with_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: CCD_DEVICE=cuda is not refused here")
    env = {"CCD_DEVICE": "cuda", "CCD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "ccd", "train", "--learner", "bpr"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "ccd train: CCD_DEVICE=cuda but torch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
