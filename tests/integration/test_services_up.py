"""The real Kafka broker and redis-server that `make test` starts are there and work.

Nothing here is mocked: messages go through the broker's log and Redis's pub/sub for real.
"""

from __future__ import annotations

import time

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

TIMEOUT_S = 30


@pytest.fixture
def admin(kafka_bootstrap: str):
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    yield client
    client.close()


@pytest.fixture
def redis_client(redis_url: str):
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def test_kafka_is_a_single_kraft_node_of_version_4(admin: KafkaAdminClient) -> None:
    cluster = admin.describe_cluster()
    assert [broker["broker_id"] for broker in cluster["brokers"]] == [1]
    assert cluster["controller_id"] == 1
    # The metadata log is a KRaft quorum whose only voter and leader is the broker itself.
    (quorum,) = admin.describe_metadata_quorum()["topics"][0]["partitions"]
    assert quorum["leader_id"] == 1
    assert [voter["replica_id"] for voter in quorum["current_voters"]] == [1]
    assert admin._client.check_version() >= (4, 0)


def test_kafka_round_trip_through_a_consumer_group(
    kafka_bootstrap: str, admin: KafkaAdminClient, unique_name: str
) -> None:
    admin.create_topics([NewTopic(unique_name, num_partitions=2, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"user-{i % 3}".encode(), f"event-{i}".encode()) for i in range(9)]
    metadata = [producer.send(unique_name, key=key, value=value) for key, value in sent]
    partition_of = {
        key: future.get(timeout=TIMEOUT_S).partition
        for (key, _), future in zip(sent, metadata, strict=True)
    }
    producer.close()

    consumer = KafkaConsumer(
        unique_name,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(received) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend(records)
    consumer.commit()
    consumer.close()

    assert sorted((r.key, r.value) for r in received) == sorted(sent)
    # Same key, same partition, in the order sent.
    for key in {key for key, _ in sent}:
        values = [r.value for r in received if r.key == key]
        assert values == [value for k, value in sent if k == key]
        assert {r.partition for r in received if r.key == key} == {partition_of[key]}
    committed = admin.list_group_offsets(unique_name)[unique_name]
    per_partition = {tp.partition: meta.offset for tp, meta in committed.items()}
    expected = {p: sum(1 for r in received if r.partition == p) for p in (0, 1)}
    assert {p: per_partition.get(p, 0) for p in (0, 1)} == expected


def test_redis_set_get_and_expiry(redis_client: redis.Redis, unique_name: str) -> None:
    key = f"{unique_name}:blob"
    payload = bytes(range(256)) * 4096  # 1 MiB of binary data survives unchanged
    assert redis_client.set(key, payload, ex=60)
    assert redis_client.get(key) == payload
    assert 0 < redis_client.ttl(key) <= 60
    assert redis_client.delete(key) == 1
    assert redis_client.get(key) is None
    assert redis_client.info("server")["redis_version"]


def test_redis_pub_sub_delivers_to_a_subscriber(
    redis_client: redis.Redis, unique_name: str
) -> None:
    channel = f"{unique_name}:updates"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    deadline = time.monotonic() + TIMEOUT_S
    while redis_client.pubsub_numsub(channel)[0][1] < 1 and time.monotonic() < deadline:
        pubsub.get_message(timeout=0.1)  # processes the subscribe confirmation
    assert redis_client.publish(channel, b"version-7") == 1  # one subscriber received it
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
    pubsub.close()
    assert message is not None
    assert (message["channel"], message["data"]) == (channel.encode(), b"version-7")
