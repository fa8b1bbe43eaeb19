"""Typed feedback of one block: which (user, item) pairs are positives, which are explicit
negatives, and how strongly (``CCD_EVENT_WEIGHTS``, ``contracts.events.EventWeights``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class BlockFeedback:
    """The pairs of one block, keys as ``trainer.process.pair_keys`` makes them.

    ``positives`` (p,) sorted distinct keys of pairs with a positive event, ``positive_weights``
    their largest weight, or None when every one is 1 (an untyped stream: nothing changes for
    the learners); ``negatives`` (q,) sorted distinct keys with only negative events and
    ``negative_weights`` (q,) their strongest |weight|; ``is_positive_event`` (n,) per event.
    """

    positives: np.ndarray
    positive_weights: torch.Tensor | None
    negatives: np.ndarray
    negative_weights: np.ndarray
    is_positive_event: np.ndarray


def typed_pairs(keys: np.ndarray, weights: np.ndarray) -> BlockFeedback:
    """Split a block's events (pair ``keys`` (n,), learning ``weights`` (n,)) into positive and
    negative pairs. A pair with any positive event is a positive, so an impression followed by
    a click is a click; weight 0 teaches nothing.

    >>> f = typed_pairs(np.array([7, 7, 3, 5, 5]), np.array([1.0, 4.0, -2.0, -0.5, 1.0]))
    >>> f.positives.tolist(), f.positive_weights.tolist(), f.negatives.tolist()
    ([5, 7], [1.0, 4.0], [3])
    >>> f.negative_weights.tolist(), f.is_positive_event.tolist()
    ([2.0], [True, True, False, False, True])
    """
    is_positive = weights > 0
    positives, slot = np.unique(keys[is_positive], return_inverse=True)
    strongest = np.zeros(len(positives), np.float32)
    np.maximum.at(strongest, slot, weights[is_positive])
    positive_weights = None if np.all(strongest == 1.0) else torch.from_numpy(strongest)
    is_negative = (weights < 0) & ~np.isin(keys, positives)
    negatives, slot = np.unique(keys[is_negative], return_inverse=True)
    negative_weights = np.zeros(len(negatives), np.float32)
    np.maximum.at(negative_weights, slot, -weights[is_negative])
    return BlockFeedback(positives, positive_weights, negatives, negative_weights, is_positive)
