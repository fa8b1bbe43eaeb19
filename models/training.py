"""Epoch loop with periodic validation, best-state keeping and early stopping."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger("ccd.models")
PROGRESS_EVERY_S = 30.0  # a long fit logs its validations, at most one line per this many seconds


@dataclass
class FitResult:
    """Outcome of ``fit``: the best validation score and when it was reached.

    ``history`` holds (epoch, train_loss, valid_score or None) per epoch run.
    """

    best_score: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[tuple[int, float, float | None]] = field(default_factory=list)


def adam(params: Iterable[Tensor], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """torch's Adam (L2 weight decay added to the gradient, as the code) with its fused kernel:
    one pass over each parameter instead of ~8 (~5x faster steps on CPU for the d=128 tables,
    the same update up to float rounding)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def snapshot(module: nn.Module) -> dict[str, Any]:
    """A deep copy of ``module.state_dict()`` (tensors cloned, extra state deep-copied)."""
    return {
        key: value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
        for key, value in module.state_dict().items()
    }


def fit(
    train_epoch: Callable[[int], float],
    validate: Callable[[], float] | None,
    module: nn.Module,
    max_epochs: int,
    eval_every: int,
    patience: int,
    skip_unselectable: bool = False,
    label: str | None = None,
) -> FitResult:
    """Train ``max_epochs`` epochs, keep the best validated state and restore it at the end.

    Validation runs after epoch e (0-based) when e % eval_every == 0, as in the code (so with
    max_epochs=10, eval_every=5 only epochs 0 and 5 can be selected). Training stops after
    ``patience`` consecutive evaluations without a strict improvement (0 = never). Without
    ``validate`` all epochs run and the final state is kept.

    Args:
        train_epoch: runs one epoch given its index, returns the training loss.
        validate: returns the validation score to maximise (e.g. Recall@20).
        module: whose ``state_dict`` is saved / restored.
        skip_unselectable: do not run the epochs after the last evaluation. They could never be
            selected (the best evaluated state is restored), so the returned state is the same
            as with them, minus the code's wasted work (6 of 10 epochs run with eval_every=5).
            The CCD stages set it; ``epochs_run`` then counts the epochs actually run.
        label: names the fit in progress lines (INFO on ``ccd.models``): a fit running long
            enough logs its validations, at most one line every ``PROGRESS_EVERY_S`` seconds
            (a Gowalla distillation runs for tens of minutes); short fits log nothing.
    """
    result = FitResult(best_score=-math.inf, best_epoch=-1, epochs_run=0, stopped_early=False)
    best_state = None
    bad_evals = 0
    if skip_unselectable and validate is not None and max_epochs > 0:
        max_epochs = (max_epochs - 1) // eval_every * eval_every + 1  # through the last evaluation
    started = last_line = time.perf_counter()
    for epoch in range(max_epochs):
        loss = float(train_epoch(epoch))
        result.epochs_run = epoch + 1
        score = None
        if validate is not None and epoch % eval_every == 0:
            score = float(validate())
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch
                best_state = snapshot(module)
                bad_evals = 0
            else:
                bad_evals += 1
        result.history.append((epoch, loss, score))
        now = time.perf_counter()
        if label is not None and score is not None and now - last_line >= PROGRESS_EVERY_S:
            last_line = now
            log.info(
                "%s: epoch %d of at most %d, valid %.4f (best %.4f at epoch %d), %.0f s so far",
                label, epoch, max_epochs - 1, score, result.best_score, result.best_epoch,
                now - started,
            )  # fmt: skip
        if patience > 0 and bad_evals >= patience:
            result.stopped_early = True
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    elif validate is None:
        result.best_epoch = result.epochs_run - 1
    return result
