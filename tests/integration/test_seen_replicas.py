"""Seen items in Redis across processes, on the real Redis and Kafka: one `ccd indexer` and two
`ccd serve` replicas with ``CCD_SEEN_STORE=redis``, as docker-compose.yml runs them.

- events produced to Kafka (3 partitions) are excluded by both replicas once the indexer wrote
  them; an event POSTed to replica A is excluded by replica B's very next answer;
- a replica killed with SIGKILL and started again is ready within 2 s of loading the model (it
  replays no log) and answers as the other does;
- the indexer killed with SIGKILL and started again resumes at its committed offsets: no pair
  lost (events produced while it was down are indexed), none counted twice (the set sizes and
  the pair counter equal the distinct pairs produced), and nothing before its commit re-read (a
  set deleted by hand before the restart stays deleted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from contracts.event_log import KafkaEventLog
from contracts.events import InteractionEvent
from contracts.model_store import RedisModelStore
from contracts.settings import Settings
from service.seen_store import seen_key
from tests.integration.children import CcdChild
from tests.integration.test_replicas import ITEMS, USERS, Replica, make_version

pytestmark = pytest.mark.slow

READY_AFTER_MODEL_S = 2.0


class Indexer(CcdChild):
    """One `ccd indexer` subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("indexer", {**env, "CCD_LOG_LEVEL": "INFO"}, log_path)

    def start(self) -> None:
        self.spawn()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.05)


def top(replica: Replica, user: str, k: int = 10) -> list[str]:
    answer = httpx.get(f"{replica.url}/recommendations/{user}", params={"k": k}, timeout=5.0)
    assert answer.status_code == 200, answer.text
    return [entry["item_id"] for entry in answer.json()["items"]]


def events(pairs: list[tuple[str, str]]) -> list[InteractionEvent]:
    return [InteractionEvent(user_id=user, item_id=item) for user, item in pairs]


def test_seen_items_in_redis_across_replicas_restarts_and_the_indexer(
    service_settings: Settings, tmp_path: Path
) -> None:
    settings = service_settings.model_copy(update={"kafka_partitions": 3, "seen_store": "redis"})
    env = {
        "CCD_KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "CCD_KAFKA_TOPIC": settings.kafka_topic,
        "CCD_KAFKA_DEAD_LETTER_TOPIC": settings.kafka_dead_letter_topic,
        "CCD_KAFKA_PARTITIONS": "3",
        "CCD_INDEXER_GROUP_ID": f"{settings.kafka_group_id}-indexer",
        "CCD_REDIS_URL": str(settings.redis_url),
        "CCD_REDIS_PREFIX": settings.redis_prefix,
        "CCD_SEEN_STORE": "redis",
    }
    publisher = RedisModelStore(str(settings.redis_url), settings.redis_prefix)
    raw = redis.Redis.from_url(str(settings.redis_url), decode_responses=True)
    log = KafkaEventLog(settings)
    indexer = Indexer(env, tmp_path / "indexer.log")
    replicas = [
        Replica(name, {**env, "CCD_DATA_DIR": str(tmp_path / name)}, tmp_path / f"{name}.log")
        for name in ("server1", "server2")
    ]
    try:
        assert publisher.publish(make_version(1)) == 1
        for replica in replicas:
            replica.start()
        indexer.start()
        a, b = replicas
        produced: set[tuple[str, str]] = set()

        # Produced to Kafka: both replicas exclude the items once the indexer wrote them.
        user = USERS[3]
        first = top(a, user)
        assert top(b, user) == first
        pairs = [(user, item) for item in first[:3]] + [(USERS[4], ITEMS[0]), (USERS[5], "x")]
        log.append(events(pairs))
        produced |= set(pairs)
        wait_for(lambda: not set(first[:3]) & set(top(a, user)), "replica A excludes", 60)
        assert (
            top(b, user) == top(a, user) == [i for i in top(a, user, 13) if i not in first[:3]][:10]
        )

        # POSTed to replica A: replica B's very next answer excludes it.
        posted = top(b, user)[0]
        answer = httpx.post(f"{a.url}/events", json={"user_id": user, "item_id": posted})
        assert answer.status_code == 202
        produced.add((user, posted))
        assert posted not in top(b, user)

        # SIGKILL a replica and start it again: ready within 2 s of having the model.
        a.kill()
        restarted_s = a.start()
        assert a.model_to_ready < READY_AFTER_MODEL_S, a.model_to_ready
        assert top(a, user) == top(b, user) and posted not in top(a, user)

        # SIGKILL the indexer once it has committed everything so far; events arrive while it
        # is down; its restart resumes at the commit.
        key = seen_key(settings.redis_prefix, user)
        wait_for(lambda: raw.scard(key) == 4, "the posted pair counted once")
        time.sleep(1.0)  # the last batch committed (commit follows the write within ms)
        indexer.kill()
        early = seen_key(settings.redis_prefix, USERS[5])
        assert raw.delete(early) == 1  # read again from the start, it would come back
        later = [(USERS[6], item) for item in ITEMS[:20]] + [(user, posted)]  # one duplicate
        log.append(events(later))
        produced |= set(later)
        indexer.start()
        wait_for(lambda: raw.scard(seen_key(settings.redis_prefix, USERS[6])) == 20, "resumed")
        time.sleep(1.0)
        assert raw.exists(early) == 0, "the restarted indexer re-read events before its commit"
        for who in {u for u, _ in produced} - {USERS[5]}:
            assert raw.smembers(seen_key(settings.redis_prefix, who)) == {
                i for u, i in produced if u == who
            }
        counted = int(raw.hget(f"{settings.redis_prefix}:seen-stats", "pairs") or 0)
        assert counted == len(produced), (counted, len(produced))
        print(
            f"\nseen items in Redis: replica restarted after SIGKILL ready {restarted_s:.2f} s "
            f"after its start, {a.model_to_ready:.2f} s after loading the model; "
            f"{len(produced)} distinct pairs indexed once each across an indexer SIGKILL"
        )
    except AssertionError:
        print(indexer.log(), *(r.log() for r in replicas), sep="\n---\n")
        raise
    finally:
        indexer.stop()
        for replica in replicas:
            replica.stop()
        log.close()
        raw.close()
        publisher.close()
