"""The A/B split: which model slot (arm) answers each user.

``CCD_AB=ccd:50,als:50`` names the arms (model slots, each published by its own trainer with
``CCD_MODEL_SLOT``) and their weights. A user's arm is a stable hash of the user id (blake2b,
64 bits, modulo the total weight), so the same user always gets the same arm on every replica
and across restarts, whatever the order of requests; changing the weights moves only the users
whose hash crosses a boundary. Without ``CCD_AB`` there is one arm, ``default``: the default
slot, as before.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from service.impressions import DEFAULT_ARM


class ArmAssigner:
    """Maps a user id to an arm name by ``arms`` [(name, weight)] (empty: ``default`` only).

    Examples:
        >>> assign = ArmAssigner([("ccd", 50), ("als", 50)])
        >>> assign("u7") == assign("u7"), assign("u7") in ("ccd", "als")
        (True, True)
        >>> ArmAssigner([])("anyone")
        'default'
    """

    def __init__(self, arms: list[tuple[str, int]]) -> None:
        self.names = [name for name, _ in arms] or [DEFAULT_ARM]
        self.weights = [weight for _, weight in arms] or [1]
        self._bounds = list(accumulate(self.weights))
        self._total = self._bounds[-1]

    def __call__(self, user_id: str) -> str:
        if len(self.names) == 1:
            return self.names[0]
        digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8)
        point = int.from_bytes(digest.digest(), "big") % self._total
        return self.names[bisect_right(self._bounds, point)]
