"""Instant personalisation: a vector for a user the served model does not know yet, from the
items the server has already seen them interact with (iALS's closed-form user step).

With the item table V (I, d) fixed, iALS's best user vector for the items S the user had is

    u = (VᵀV + α V_Sᵀ V_S + λ I)⁻¹ (1 + α) Σ_{i∈S} v_i

(confidence 1 + α on the user's items, 1 on every other item, which VᵀV counts once for all:
Hu, Koren and Volinsky, ICDM 2008). It costs one d x d solve per request, whatever the
catalogue size. λ is relative to the table's scale (``trace(VᵀV) / d``), so the same setting
suits a student whose vectors are small and an iALS table whose vectors are large. α and λ were
chosen on validation users by ``ccd bench foldin`` (docs/BENCHMARKS.md, "Fold-in"): the best mean
over MovieLens and Yelp, the ccd student and iALS; a large λ leans towards the plain sum of the
user's item vectors.
"""

from __future__ import annotations

import numpy as np

FOLD_IN_ALPHA = 10.0  # confidence of the user's own items over unobserved ones
FOLD_IN_REGULARIZATION = 10.0  # x trace(VᵀV) / d


def fold_in_vector(
    items: np.ndarray,
    gramian: np.ndarray,
    rows: np.ndarray,
    alpha: float = FOLD_IN_ALPHA,
    regularization: float = FOLD_IN_REGULARIZATION,
) -> np.ndarray:
    """The (d,) user vector for the item rows ``rows`` (n,) of ``items`` (I, d), given the
    table's ``gramian`` = VᵀV (d, d) float64.

    >>> v = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    >>> u = fold_in_vector(v, v.T @ v, np.array([0]))
    >>> bool(u @ v[2] > u @ v[1])  # an item like the one they had comes first
    True
    """
    chosen = np.asarray(items[rows], dtype=np.float64)
    dim = gramian.shape[0]
    scale = max(float(np.trace(gramian)) / dim, 1e-12)
    system = gramian + alpha * chosen.T @ chosen + regularization * scale * np.eye(dim)
    return np.linalg.solve(system, (1.0 + alpha) * chosen.sum(axis=0))
