"""fit: evaluation schedule, early stopping and restoring the best state."""

from __future__ import annotations

import torch
from torch import nn

from models.training import fit


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


def test_fit_without_validation_keeps_the_last_state() -> None:
    rec = Recorder([])
    result = fit(rec.train_epoch, None, rec.module, max_epochs=3, eval_every=1, patience=1)
    assert result.epochs_run == 3 and result.best_epoch == 2
    assert rec.module.weight.item() == 2.0
