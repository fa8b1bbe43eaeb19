"""BPR-MF: score(u, i) = user_table[u] · item_table[i]."""

from __future__ import annotations

from models.members.base import Member


class BPRMF(Member):
    """Matrix factorisation trained with BPR; the final embeddings are the ego tables."""

    kind = "mf"
