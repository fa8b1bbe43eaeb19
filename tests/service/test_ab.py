"""The A/B split (service.ab): model slots, stable arms by weight, the arm in every answer, online
hit rates per arm, rollback per slot; and the slot's own store, lease, checkpoints and group."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts.model_store import FileModelStore, ModelSnapshot
from contracts.settings import Settings
from service.ab import ArmAssigner
from service.app import create_app
from tests.service.conftest import wait_until
from trainer.lease import open_lease

N_USERS, N_ITEMS, LIKED, K = 400, 60, 5, 5
API_KEY = "ab-test-key"


def test_a_slot_has_its_own_store_lease_checkpoints_and_consumer_group(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path, redis_url=None, kafka_bootstrap_servers=None)
    slot = Settings(
        data_dir=tmp_path, redis_url=None, kafka_bootstrap_servers=None, model_slot="als"
    )
    assert (default.model_store_dir, default.checkpoint_dir) == (
        tmp_path / "models",
        tmp_path / "checkpoints",
    )
    assert slot.model_store_dir == tmp_path / "slots" / "als" / "models"
    assert slot.checkpoint_dir == tmp_path / "slots" / "als" / "checkpoints"
    assert (default.store_prefix, slot.store_prefix) == ("ccd", "ccd:slot:als")
    assert (default.kafka_group_id, slot.kafka_group_id) == ("ccd-trainer", "ccd-trainer-als")
    assert open_lease(slot).path == tmp_path / "slots" / "als" / "trainer.lock"  # type: ignore[attr-defined]
    for bad in ("ccd:50", "ccd:50,ccd:50", "ccd:0,als:1", "CCD:1,als:1", "ccd,als"):
        with pytest.raises(ValueError, match="ab"):
            Settings(ab=bad)


def test_users_split_stably_by_weight() -> None:
    assign = ArmAssigner([("a", 80), ("b", 20)])
    arms = [assign(f"user-{n}") for n in range(20_000)]
    assert arms == [ArmAssigner([("a", 80), ("b", 20)])(f"user-{n}") for n in range(20_000)]
    assert abs(Counter(arms)["b"] / len(arms) - 0.2) < 0.015


def _population(seed: int = 5) -> list[set[int]]:
    """Each user's liked items: ``LIKED`` of ``N_ITEMS``, drawn at random."""
    rng = np.random.default_rng(seed)
    return [set(rng.choice(N_ITEMS, LIKED, replace=False).tolist()) for _ in range(N_USERS)]


def _snapshot(user_vectors: np.ndarray, item_vectors: np.ndarray) -> ModelSnapshot:
    return ModelSnapshot(
        user_ids=[f"u{n}" for n in range(N_USERS)],
        item_ids=[f"i{n}" for n in range(N_ITEMS)],
        user_embeddings=user_vectors.astype(np.float32),
        item_embeddings=item_vectors.astype(np.float32),
        item_popularity=np.ones(N_ITEMS, dtype=np.float32),
    )


def _good_and_bad(liked: list[set[int]]) -> tuple[ModelSnapshot, ModelSnapshot]:
    """Good: scores exactly the user's liked items highest (one-hot items). Bad: random."""
    good_users = np.zeros((N_USERS, N_ITEMS))
    for user, items in enumerate(liked):
        good_users[user, sorted(items)] = 1.0
    rng = np.random.default_rng(11)
    bad = _snapshot(rng.standard_normal((N_USERS, 8)), rng.standard_normal((N_ITEMS, 8)))
    return _snapshot(good_users, np.eye(N_ITEMS)), bad


@pytest.fixture
def ab_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=None,
        redis_url=None,
        reload_poll_s=0.1,
        ab="bad:50,good:50",
        api_key=API_KEY,
    )


def _slot_store(settings: Settings, slot: str) -> FileModelStore:
    slot_settings = settings.for_slot(slot)
    return FileModelStore(slot_settings.model_store_dir, slot_settings.keep_versions)


def test_better_arm_has_the_higher_online_hit_rate(ab_settings: Settings) -> None:
    """A synthetic population clicks every shown item it likes, with the recommendation_id;
    arm `good` (a model that knows the likes) beats arm `bad` (random embeddings), with 95 %
    intervals that do not overlap."""
    liked = _population()
    good, bad = _good_and_bad(liked)
    _slot_store(ab_settings, "good").publish(good)
    _slot_store(ab_settings, "bad").publish(bad)
    assign = ArmAssigner(ab_settings.ab_arms)
    with TestClient(create_app(ab_settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        events, arms = [], Counter()
        for user in range(N_USERS):
            answer = client.get(f"/recommendations/u{user}", params={"k": K}).json()
            assert answer["arm"] == assign(f"u{user}")
            arms[answer["arm"]] += 1
            for item in answer["items"]:
                if int(item["item_id"][1:]) in liked[user]:
                    events.append(
                        {
                            "user_id": f"u{user}",
                            "item_id": item["item_id"],
                            "recommendation_id": answer["recommendation_id"],
                        }
                    )
        assert client.post("/events", json=events).status_code == 202
        online = lambda: client.get("/stats/online").json()  # noqa: E731
        wait_until(lambda: online()["total"]["hits"] == len(events))
        by_arm = {row["arm"]: row for row in online()["arms"]}
    assert {arm: by_arm[arm]["impressions"] for arm in by_arm} == dict(arms)
    assert by_arm["good"]["hit_rate"] == 1.0
    assert by_arm["bad"]["hit_rate"] < 0.6
    assert by_arm["good"]["hit_rate_ci95"][0] > by_arm["bad"]["hit_rate_ci95"][1]
    assert min(arms.values()) > N_USERS * 0.4  # both arms got about half the users


def test_rollback_and_versions_per_slot(ab_settings: Settings) -> None:
    liked = _population()
    good, bad = _good_and_bad(liked)
    good_store, bad_store = _slot_store(ab_settings, "good"), _slot_store(ab_settings, "bad")
    good_store.publish(good)
    bad_store.publish(bad)
    good_store.publish(good)  # good: versions 1 and 2; bad: 1
    assign = ArmAssigner(ab_settings.ab_arms)
    good_user = next(f"u{n}" for n in range(N_USERS) if assign(f"u{n}") == "good")
    bad_user = next(f"u{n}" for n in range(N_USERS) if assign(f"u{n}") == "bad")
    headers = {"X-API-Key": API_KEY}
    with TestClient(create_app(ab_settings)) as client:
        wait_until(lambda: client.get(f"/recommendations/{good_user}").status_code == 200)
        wait_until(lambda: client.get(f"/recommendations/{good_user}").json()["model_version"] == 2)
        versions = client.get("/admin/versions", params={"slot": "good"}, headers=headers).json()
        assert (versions["versions"], versions["served"]) == ([1, 2], 2)
        response = client.post(
            "/admin/rollback", json={"version": 1, "slot": "good"}, headers=headers
        )
        assert response.json() == {"version": 1, "previous": 2}
        assert client.get(f"/recommendations/{good_user}").json()["model_version"] == 1
        batch = client.post("/recommendations", json={"user_ids": [bad_user, good_user]}).json()
        assert [(r["arm"], r["model_version"]) for r in batch["results"]] == [
            ("bad", 1),
            ("good", 1),
        ]
        arms = client.get("/dashboard/api/overview").json()["arms"]
        assert [(a["arm"], a["weight"], a["served_version"]) for a in arms] == [
            ("bad", 50, 1),
            ("good", 50, 1),
        ]
        missing = client.post("/admin/rollback", json={"version": 1, "slot": "x"}, headers=headers)
        assert missing.status_code == 404
