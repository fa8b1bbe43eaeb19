"""A seeded synthetic interaction stream for demos, tests and benchmarks at any scale.

Users and items have latent factors; an event picks an active user, draws candidate items from a
Zipf-like popularity prior and chooses one of them by affinity (softmax of the dot product), so the
stream has both popularity skew and learnable personal taste. Over time new users and items appear
(each one is guaranteed an event in the batch it appears in) and user tastes drift as a random walk.
Generation is vectorised in batches; ``batches()`` gives raw index arrays, iteration gives
``InteractionEvent``s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from contracts.events import InteractionEvent

# 2023-11-14: a fixed default start keeps seeded output independent of the wall clock.
DEFAULT_START_TIME = 1_700_000_000.0


class _Rows:
    """An array that grows along axis 0 with amortised doubling (no copy per append)."""

    def __init__(self, initial: np.ndarray) -> None:
        self._buffer = initial
        self.size = len(initial)

    @property
    def data(self) -> np.ndarray:
        return self._buffer[: self.size]

    def append(self, rows: np.ndarray) -> None:
        needed = self.size + len(rows)
        if needed > len(self._buffer):
            shape = (max(needed, 2 * len(self._buffer)), *self._buffer.shape[1:])
            grown = np.empty(shape, dtype=self._buffer.dtype)
            grown[: self.size] = self.data
            self._buffer = grown
        self._buffer[self.size : needed] = rows
        self.size = needed


@dataclass
class SyntheticBatch:
    """Events ``start .. start + len - 1`` of the stream: index arrays (n,) and times (n,)."""

    start: int
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


class SyntheticStream:
    """Endless (or ``n_events`` long) time-ordered stream of interactions.

    Args:
        n_users / n_items: entities active at the start.
        dim: latent dimension of the ground-truth factors.
        seed: the whole stream is a function of the arguments.
        new_user_rate / new_item_rate: expected new entities per event.
        popularity_skew: Zipf exponent of the item prior (0 = uniform).
        drift: per-1000-events step of the users' taste random walk, relative to its scale.
        n_events: stop after this many events (None = never stop).
        events_per_second: spacing of the synthetic timestamps.
        candidates: items drawn from the prior per event, one of which the user picks by taste.
        affinity_scale: sharpness of that pick (higher = more personal, less popular).
        batch_size: events generated per vectorised step.
    """

    def __init__(
        self,
        n_users: int = 1_000,
        n_items: int = 500,
        dim: int = 16,
        seed: int = 0,
        new_user_rate: float = 0.002,
        new_item_rate: float = 0.0005,
        popularity_skew: float = 1.0,
        drift: float = 0.02,
        n_events: int | None = None,
        start_time: float = DEFAULT_START_TIME,
        events_per_second: float = 10.0,
        candidates: int = 32,
        affinity_scale: float = 4.0,
        batch_size: int = 4_096,
    ) -> None:
        if n_users < 1 or n_items < 1 or dim < 1 or candidates < 1 or batch_size < 1:
            raise ValueError("sizes must be positive")
        if events_per_second <= 0:
            raise ValueError("events_per_second must be positive")
        self.n_events = n_events
        self.start_time = start_time
        self.events_per_second = events_per_second
        self.new_user_rate = new_user_rate
        self.new_item_rate = new_item_rate
        self.popularity_skew = popularity_skew
        self.drift = drift
        self.candidates = candidates
        self.affinity_scale = affinity_scale
        self.batch_size = batch_size
        self.dim = dim
        self._initial_items = n_items
        self._rng = np.random.default_rng(seed)
        self._user_factors = _Rows(self._draw_factors(n_users))
        self._user_updated_at = _Rows(np.zeros(n_users, dtype=np.int64))  # last drift (event)
        self._item_factors = _Rows(self._draw_factors(n_items))
        # Running sum of the items' prior weights, for inverse-CDF sampling.
        self._item_cumulative = _Rows(np.cumsum(self._draw_item_weights(n_items)))
        self._emitted = 0
        self._clock = start_time

    @property
    def n_users(self) -> int:
        """Users created so far."""
        return self._user_factors.size

    @property
    def n_items(self) -> int:
        """Items created so far."""
        return self._item_factors.size

    def _draw_factors(self, count: int) -> np.ndarray:
        return (self._rng.standard_normal((count, self.dim)) / np.sqrt(self.dim)).astype(np.float32)

    def _draw_item_weights(self, count: int) -> np.ndarray:
        """Prior weights ``(1 + r) ** -skew`` with a random rank r among the initial catalogue, so
        new items draw their popularity from the same Zipf-like law."""
        ranks = self._rng.uniform(0.0, self._initial_items, size=count)
        return (1.0 + ranks) ** -self.popularity_skew

    def batches(self) -> Iterator[SyntheticBatch]:
        while self.n_events is None or self._emitted < self.n_events:
            size = self.batch_size
            if self.n_events is not None:
                size = min(size, self.n_events - self._emitted)
            yield self._next_batch(size)

    def __iter__(self) -> Iterator[InteractionEvent]:
        for batch in self.batches():
            for offset, (user, item, timestamp) in enumerate(
                zip(
                    batch.users.tolist(),
                    batch.items.tolist(),
                    batch.timestamps.tolist(),
                    strict=True,
                )
            ):
                # Values are valid by construction; skipping validation keeps this cheap.
                yield InteractionEvent.model_construct(
                    user_id=f"u{user}",
                    item_id=f"i{item}",
                    timestamp=timestamp,
                    event_id=f"syn-{batch.start + offset}",
                )

    def _next_batch(self, size: int) -> SyntheticBatch:
        new_users = self._grow_users(size)
        new_items = self._grow_items(size)
        users = self._rng.integers(0, self.n_users, size=size)
        # Newcomers act in the batch they arrive in (one slot each, chosen at random).
        slots = self._rng.permutation(size)
        users[slots[: len(new_users)]] = new_users
        self._drift_users(np.unique(users))
        items = self._pick_items(users)
        items[slots[len(new_users) : len(new_users) + len(new_items)]] = new_items
        timestamps = self._clock + np.cumsum(
            self._rng.exponential(1.0 / self.events_per_second, size=size)
        )
        self._clock = float(timestamps[-1])
        batch = SyntheticBatch(self._emitted, users, items, timestamps)
        self._emitted += size
        return batch

    def _grow_users(self, size: int) -> np.ndarray:
        count = min(int(self._rng.poisson(self.new_user_rate * size)), size // 2)
        first = self.n_users
        self._user_factors.append(self._draw_factors(count))
        self._user_updated_at.append(np.full(count, self._emitted))
        return np.arange(first, first + count)

    def _grow_items(self, size: int) -> np.ndarray:
        count = min(int(self._rng.poisson(self.new_item_rate * size)), size // 2)
        first = self.n_items
        self._item_factors.append(self._draw_factors(count))
        total = self._item_cumulative.data[-1]
        self._item_cumulative.append(total + np.cumsum(self._draw_item_weights(count)))
        return np.arange(first, first + count)

    def _drift_users(self, users: np.ndarray) -> None:
        """Advance the taste random walk of ``users`` to now, lazily: k steps of
        ``x <- (x + s * noise) / sqrt(1 + s^2)`` equal ``a^k x + sqrt(1 - a^2k) * noise`` with
        ``a = 1 / sqrt(1 + s^2)``, so only the users in the batch are touched and the factors
        keep their scale."""
        if self.drift <= 0:
            return
        factors, updated_at = self._user_factors.data, self._user_updated_at.data
        elapsed = (self._emitted - updated_at[users]) / 1000.0
        keep = (1.0 + self.drift**2) ** (-elapsed / 2.0)
        noise = self._draw_factors(len(users))
        factors[users] = keep[:, None] * factors[users] + np.sqrt(1.0 - keep**2)[:, None] * noise
        updated_at[users] = self._emitted

    def _pick_items(self, users: np.ndarray) -> np.ndarray:
        """For each user (n,), draw candidates (n, C) from the prior, choose one by taste."""
        cumulative = self._item_cumulative.data
        draws = self._rng.uniform(0.0, cumulative[-1], size=(len(users), self.candidates))
        candidates = np.minimum(np.searchsorted(cumulative, draws), self.n_items - 1)
        affinity = np.einsum(
            "nd,ncd->nc", self._user_factors.data[users], self._item_factors.data[candidates]
        )
        logits = self.affinity_scale * np.sqrt(self.dim) * affinity
        # Gumbel-max: one categorical draw per row without normalising.
        choice = np.argmax(logits + self._rng.gumbel(size=logits.shape), axis=1)
        return candidates[np.arange(len(users)), choice]
