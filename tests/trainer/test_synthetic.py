"""The synthetic stream: seeded, time-ordered, growing, skewed, drifting, learnable."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.synthetic import SyntheticStream


def concat(stream: SyntheticStream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batches = list(stream.batches())
    return tuple(
        np.concatenate([getattr(b, f) for b in batches]) for f in ("users", "items", "timestamps")
    )


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    first = [e.model_dump() for e in SyntheticStream(seed=3, n_events=2_000, batch_size=500)]
    again = [e.model_dump() for e in SyntheticStream(seed=3, n_events=2_000, batch_size=500)]
    other = [e.model_dump() for e in SyntheticStream(seed=4, n_events=2_000, batch_size=500)]
    assert first == again and first != other
    assert len(first) == 2_000
    assert first[0]["event_id"] == "syn-0" and first[-1]["event_id"] == "syn-1999"


def test_events_are_in_time_order_and_valid() -> None:
    stream = SyntheticStream(n_events=3_000, batch_size=700, start_time=1_000.0)
    events = list(stream)
    times = np.array([e.timestamp for e in events])
    assert times[0] > 1_000.0 and np.all(np.diff(times) > 0)
    # ~10 events per second by default.
    assert (times[-1] - times[0]) == pytest.approx(300.0, rel=0.1)
    assert all(e.user_id.startswith("u") and e.item_id.startswith("i") for e in events[:50])


def test_new_users_and_items_appear_and_act_when_they_appear() -> None:
    stream = SyntheticStream(
        n_users=100,
        n_items=50,
        new_user_rate=0.01,
        new_item_rate=0.005,
        n_events=4_000,
        batch_size=1_000,
    )
    users, items, _ = concat(stream)
    assert stream.n_users > 100 and stream.n_items > 50
    # Every entity created so far has interacted, and the newcomers come after the start.
    assert set(np.unique(users)) >= set(range(100, stream.n_users))
    assert set(np.unique(items)) >= set(range(50, stream.n_items))
    first_seen_new_user = np.argmax(users >= 100)
    assert first_seen_new_user > 0
    # The expected counts: rate x events, within Poisson noise.
    assert 20 <= stream.n_users - 100 <= 60 and 8 <= stream.n_items - 50 <= 35


def test_no_growth_at_rate_zero() -> None:
    stream = SyntheticStream(n_users=30, n_items=20, new_user_rate=0, new_item_rate=0, n_events=500)
    users, items, _ = concat(stream)
    assert users.max() < 30 and items.max() < 20 and stream.n_users == 30


def test_popularity_is_skewed_and_skew_zero_is_flatter() -> None:
    def top_decile_share(skew: float) -> float:
        stream = SyntheticStream(
            n_users=500, n_items=400, popularity_skew=skew, new_item_rate=0, n_events=20_000
        )
        counts = np.sort(np.bincount(concat(stream)[1], minlength=stream.n_items))[::-1]
        return counts[: len(counts) // 10].sum() / counts.sum()

    skewed, flat = top_decile_share(1.2), top_decile_share(0.0)
    assert skewed > 0.4  # the top 10% of items get well over 10% of the events
    assert flat < 0.3 and skewed > flat + 0.15


def test_users_have_personal_taste() -> None:
    """A user's items follow their latent factors: two users' item distributions differ more
    than two halves of one user's history do."""
    stream = SyntheticStream(
        n_users=4,
        n_items=200,
        new_user_rate=0,
        new_item_rate=0,
        drift=0.0,
        n_events=8_000,
        popularity_skew=0.5,
    )
    users, items, _ = concat(stream)

    def histogram(mask: np.ndarray) -> np.ndarray:
        h = np.bincount(items[mask], minlength=200).astype(float)
        return h / h.sum()

    half = len(users) // 2
    first, second = np.arange(len(users)) < half, np.arange(len(users)) >= half
    same_user = np.abs(histogram((users == 0) & first) - histogram((users == 0) & second)).sum()
    other_user = np.abs(histogram(users == 0) - histogram(users == 1)).sum()
    assert other_user > 1.5 * same_user


def test_drift_changes_a_users_taste_over_time() -> None:
    def shift(drift: float) -> float:
        stream = SyntheticStream(
            n_users=2,
            n_items=100,
            new_user_rate=0,
            new_item_rate=0,
            drift=drift,
            n_events=20_000,
            popularity_skew=0.3,
        )
        users, items, _ = concat(stream)
        early = np.bincount(items[(users == 0)][:1500], minlength=100) / 1500
        late = np.bincount(items[(users == 0)][-1500:], minlength=100) / 1500
        return float(np.abs(early - late).sum())

    assert shift(0.5) > shift(0.0) + 0.3


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError):
        SyntheticStream(n_users=0)
