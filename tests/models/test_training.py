"""fit: evaluation schedule, early stopping and restoring the best state."""

from __future__ import annotations

import torch
from torch import nn

from models import training
from models.training import adam, fit


class Recorder:
    """A one-parameter module whose value is the last epoch trained; scripted valid scores."""

    def __init__(self, scores: list[float]) -> None:
        self.module = nn.Linear(1, 1, bias=False)
        self.scores = scores
        self.evaluated_after: list[int] = []

    def train_epoch(self, epoch: int) -> float:
        with torch.no_grad():
            self.module.weight.fill_(float(epoch))
        return 10.0 - epoch

    def validate(self) -> float:
        epoch = int(self.module.weight.item())
        self.evaluated_after.append(epoch)
        return self.scores[epoch]


def test_fit_restores_best_and_stops_early() -> None:
    rec = Recorder([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    result = fit(rec.train_epoch, rec.validate, rec.module, max_epochs=6, eval_every=1, patience=2)
    assert rec.evaluated_after == [0, 1, 2, 3]  # two evaluations without improvement
    assert result.best_epoch == 1 and result.best_score == 0.5
    assert result.epochs_run == 4 and result.stopped_early
    assert rec.module.weight.item() == 1.0  # state after epoch 1 restored
    assert result.history[0] == (0, 10.0, 0.1) and result.history[-1] == (3, 7.0, 0.2)


def test_fit_evaluates_every_k_epochs_like_the_code() -> None:
    rec = Recorder([0.1] * 5 + [0.2] * 5)
    result = fit(rec.train_epoch, rec.validate, rec.module, max_epochs=10, eval_every=5, patience=2)
    assert rec.evaluated_after == [0, 5]
    assert result.best_epoch == 5 and result.epochs_run == 10 and not result.stopped_early
    assert rec.module.weight.item() == 5.0  # epochs 6..9 trained, then discarded


def test_fit_ties_do_not_count_as_improvement() -> None:
    rec = Recorder([0.4, 0.4, 0.4, 0.9])
    result = fit(rec.train_epoch, rec.validate, rec.module, max_epochs=4, eval_every=1, patience=2)
    assert result.best_epoch == 0 and result.epochs_run == 3


def test_a_long_labelled_fit_logs_its_validations(monkeypatch, caplog) -> None:
    rec = Recorder([0.1, 0.5, 0.3, 0.2])
    with caplog.at_level("INFO", logger="ccd.models"):
        fit(rec.train_epoch, rec.validate, rec.module, max_epochs=4, eval_every=2, patience=0)
        fit(rec.train_epoch, rec.validate, rec.module, 4, 2, 0, label="quick fit")
        assert caplog.messages == []  # unlabelled, or labelled but done within the interval
        monkeypatch.setattr(training, "PROGRESS_EVERY_S", 0.0)  # every validation is "long"
        fit(rec.train_epoch, rec.validate, rec.module, 4, 2, 0, label="Stage 1 distillation")
    assert [m.split(", valid")[0] for m in caplog.messages] == [
        "Stage 1 distillation: epoch 0 of at most 3",
        "Stage 1 distillation: epoch 2 of at most 3",
    ]
    assert "valid 0.3000 (best 0.3000 at epoch 2)" in caplog.messages[1]


def test_fit_without_validation_keeps_the_last_state() -> None:
    rec = Recorder([])
    result = fit(rec.train_epoch, None, rec.module, max_epochs=3, eval_every=1, patience=1)
    assert result.epochs_run == 3 and result.best_epoch == 2
    assert rec.module.weight.item() == 2.0


def test_adam_helper_matches_torch_adam() -> None:
    """The fused kernel performs the same Adam + L2 update as the reference loop."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, 8, generator=g)
    grads = [torch.randn(50, 8, generator=g) for _ in range(5)]
    params = [nn.Parameter(start.clone()), nn.Parameter(start.clone())]
    optimizers = [
        adam([params[0]], 1e-2, 1e-4),
        torch.optim.Adam([params[1]], 1e-2, weight_decay=1e-4),
    ]
    for grad in grads:
        for param, optimizer in zip(params, optimizers, strict=True):
            param.grad = grad.clone()
            optimizer.step()
    assert not torch.equal(params[0].detach(), start)
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_fit_can_skip_the_epochs_after_the_last_evaluation() -> None:
    """Same selected state and score as running all 10 epochs, but epochs 6..9 are not run."""
    full, short = Recorder([0.1] * 5 + [0.2] * 5), Recorder([0.1] * 5 + [0.2] * 5)
    want = fit(full.train_epoch, full.validate, full.module, 10, eval_every=5, patience=2)
    got = fit(short.train_epoch, short.validate, short.module, 10, 5, 2, skip_unselectable=True)
    assert (got.best_epoch, got.best_score) == (want.best_epoch, want.best_score) == (5, 0.2)
    assert got.epochs_run == 6 and short.module.weight.item() == full.module.weight.item() == 5.0
    no_valid = Recorder([])
    result = fit(no_valid.train_epoch, None, no_valid.module, 10, 5, 2, skip_unselectable=True)
    assert result.epochs_run == 10  # without validation the last state is kept: all epochs run
