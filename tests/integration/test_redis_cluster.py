"""Every Redis user of the project against a real Redis Cluster of three masters (no mocks).

The cluster is the one ``CCD_TEST_REDIS_CLUSTER_URL`` names (``redis+cluster://host:port,...``),
else three of Debian's ``redis-server`` started here with ``--cluster-enabled yes`` on free
loopback ports and joined by ``redis-cli --cluster create`` (replicas 0); each node runs in its
own process group, killed at the end whatever happened. Each test keeps its keys under a prefix
of its own, so that a given cluster is left with only those.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from contracts.catalogue import ItemMetadata, RedisCatalogue, open_catalogue
from contracts.model_store import (
    ModelSnapshot,
    RedisModelStore,
    StaleWriterError,
    open_model_store,
)
from contracts.redis_client import connect, is_cluster, parse_url
from contracts.settings import Settings
from service.impressions import Impression, RedisImpressionStore
from service.metrics import ServiceMetrics
from service.model_holder import ModelHolder
from service.seen_store import RedisSeenIndex
from tests.faults.harness import test_services
from trainer.lease import RedisLease, open_lease

pytestmark = pytest.mark.integration

CLUSTER_ENV = "CCD_TEST_REDIS_CLUSTER_URL"
MASTERS = 3
READY_S = 30.0


class OwnCluster:
    """Three masters on free ports, each ``redis-server`` in its own process group; ``kill``
    and ``start`` again bring the same nodes back (their ``nodes.conf`` keeps the layout)."""

    def __init__(self, work_dir: Path) -> None:
        redis_server = test_services.require_tool("redis-server", "redis-server")
        self.redis_cli = test_services.require_tool("redis-cli", "redis-tools")
        self.nodes: list[tuple[str, list[str], Path]] = []  # address, command, folder
        for index in range(MASTERS):
            node_dir = work_dir / f"node{index}"
            node_dir.mkdir()
            # The cluster bus gets a port of its own: the default (port + 10000) may not exist.
            port, bus_port = test_services.free_port(), test_services.free_port()
            cmd = [
                redis_server,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus_port),
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(node_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", "",
            ]  # fmt: skip
            self.nodes.append((f"127.0.0.1:{port}", cmd, node_dir))
        self.url = "redis+cluster://" + ",".join(address for address, _, _ in self.nodes)
        self.services: list = []

    def start(self, create: bool = False) -> None:
        for index, (address, cmd, node_dir) in enumerate(self.nodes):
            service = test_services.spawn(f"cluster node {index}", cmd, node_dir, node_dir / "log")
            self.services.append(service)
            url = f"redis://{address}/0"
            test_services.wait_until(service, lambda url=url: test_services.redis_ping(url), "PING")
        addresses = [address for address, _, _ in self.nodes]
        if create:
            test_services.run_checked(
                [self.redis_cli, "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                "redis-cli --cluster create",
            )  # fmt: skip
        deadline = time.monotonic() + READY_S
        while not all(cluster_ok(address) for address in addresses):
            if time.monotonic() > deadline:
                pytest.fail(f"cluster_state:ok not reached in {READY_S:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        for service in self.services:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()
        self.services = []

    def stop(self) -> None:
        for service in self.services:
            service.stop()
        self.services = []


def cluster_ok(address: str) -> bool:
    client = redis.Redis.from_url(f"redis://{address}/0", socket_timeout=2)
    try:
        return client.cluster("info").get("cluster_state") == "ok"
    finally:
        client.close()


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnCluster | None]:
    """The cluster this module started, or None when ``CCD_TEST_REDIS_CLUSTER_URL`` names one."""
    if os.environ.get(CLUSTER_ENV):
        yield None
        return
    cluster = OwnCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start(create=True)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster_url(own_cluster: OwnCluster | None) -> str:
    return own_cluster.url if own_cluster is not None else os.environ[CLUSTER_ENV]


@pytest.fixture
def cluster(cluster_url: str) -> Iterator[redis.cluster.RedisCluster]:
    client = connect(cluster_url, socket_timeout=5)
    yield client.client()
    client.close()


def masters(client: redis.cluster.RedisCluster) -> list:
    return client.get_primaries()


def keys_per_master(client: redis.cluster.RedisCluster, pattern: str) -> list[int]:
    """How many keys matching ``pattern`` each master holds, read from each node itself."""
    counts = []
    for node in masters(client):
        direct = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
        counts.append(sum(1 for _ in direct.scan_iter(match=pattern, count=1000)))
        direct.close()
    return counts


def snapshot(fill: float, n_users: int) -> ModelSnapshot:
    rng = np.random.default_rng(int(fill))
    return ModelSnapshot(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=["a", "b", "c"],
        user_embeddings=rng.standard_normal((n_users, 64)).astype(np.float32),
        item_embeddings=np.full((3, 64), fill, dtype=np.float32),
        item_popularity=np.array([3, 2, 1], dtype=np.float32),
        meta={"block_index": int(fill)},
    )


def test_the_url_selects_a_cluster_client_and_the_cluster_has_three_masters(
    cluster_url: str, cluster: redis.cluster.RedisCluster
) -> None:
    assert parse_url(cluster_url).cluster
    assert is_cluster(connect(cluster_url, socket_timeout=5))
    assert len(masters(cluster)) >= 2  # a given cluster may have more; ours has 3
    if not os.environ.get(CLUSTER_ENV):
        assert len(masters(cluster)) == MASTERS


def test_publish_fenced_load_hot_swap_and_prune_on_a_cluster(
    cluster_url: str, cluster: redis.cluster.RedisCluster, unique_name: str, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=cluster_url, redis_prefix=unique_name, keep_versions=2, data_dir=tmp_path
    )
    publisher = open_model_store(settings)
    lease = open_lease(settings)
    server_store = RedisModelStore(cluster_url, unique_name)
    # Poll every minute: a swap within seconds came through the cluster's pub/sub.
    holder = ModelHolder(server_store, ServiceMetrics(), poll_s=60.0)
    try:
        assert isinstance(publisher, RedisModelStore) and isinstance(lease, RedisLease)
        # The version keys and the lease (the flip's fence) share one slot.
        slots = {
            cluster.keyslot(key)
            for key in (f"{publisher.prefix}:current", f"{publisher.prefix}:versions", lease.key)
        }
        assert publisher.prefix == f"{{{unique_name}}}" and len(slots) == 1
        assert lease.acquire(threading.Event())
        # 20k users x 64 dims: two 4 MiB chunks, read back with one MGET.
        first = snapshot(1.0, n_users=20_000)
        assert publisher.publish(first, fence=lease.fence) == 1
        holder.start()
        assert holder.model is not None and holder.model.version == 1
        assert len(cluster.get(f"{publisher.prefix}:model:1:chunk:1") or b"") > 0
        np.testing.assert_array_equal(server_store.load(1).user_embeddings, first.user_embeddings)
        # Subscribed (the store reads the pointer once when it subscribes, then only listens):
        # a swap within 2 s of this publish, with a poll every minute, came by pub/sub.
        assert wait_for(lambda: server_store._pubsub is not None)
        time.sleep(0.5)
        started = time.monotonic()
        assert publisher.publish(snapshot(2.0, n_users=50), fence=lease.fence) == 2
        assert holder.wait_for_version(2, timeout_s=2.0), "no announcement through the cluster"
        assert time.monotonic() - started < 2.0 and holder.model.n_users == 50
        assert publisher.publish(snapshot(3.0, n_users=50), fence=lease.fence) == 3
        assert publisher.versions() == [2, 3]  # version 1 pruned (one transaction)
        assert cluster.get(f"{publisher.prefix}:model:1:chunk:0") is None
        assert wait_for(lambda: holder.model is not None and holder.model.version == 3, 2.0)
        server_store.set_current(2)  # a rollback, announced too
        assert wait_for(lambda: holder.model is not None and holder.model.version == 2, 2.0)
        lease.release()
        with pytest.raises(StaleWriterError):  # the fence no longer holds: refused atomically
            publisher.publish(snapshot(4.0, n_users=50), fence=lease.fence)
    finally:
        holder.stop()
        lease.close()
        server_store.close()
        publisher.close()
        delete_prefix(cluster, f"{{{unique_name}}}")


def test_the_lease_takes_renews_and_passes_on_a_cluster(
    cluster_url: str, cluster: redis.cluster.RedisCluster, unique_name: str
) -> None:
    first = RedisLease(cluster_url, unique_name, ttl_s=0.6)
    second = RedisLease(cluster_url, unique_name, ttl_s=0.6)
    stop = threading.Event()
    try:
        assert first.acquire(stop) and first.epoch == 1
        time.sleep(1.5)  # 2.5 TTLs: only the heartbeat's renewals keep it
        first.check()
        assert first.wait_trusted(stop)
        assert cluster.get(first.key) == first.holder.encode()
        taker = threading.Thread(target=second.acquire, args=(stop,), daemon=True)
        taker.start()
        taker.join(1.0)
        assert taker.is_alive()  # standing by while the first renews
        first.release()
        taker.join(5.0)
        assert not taker.is_alive() and second.epoch == 2
        assert cluster.get(second.epoch_key) == b"2"
    finally:
        stop.set()
        first.close()
        second.close()
        delete_prefix(cluster, f"{{{unique_name}}}")


def test_seen_sets_are_spread_over_every_master_and_read_back(
    cluster_url: str, cluster: redis.cluster.RedisCluster, unique_name: str
) -> None:
    index = RedisSeenIndex(cluster_url, unique_name, timeout_s=5.0)
    users = [f"user-{n}" for n in range(60)]
    pairs = [(user, f"item-{n % 7}-{k}") for n, user in enumerate(users) for k in range(3)]
    try:
        assert index.add(pairs) == len(pairs)
        assert index.add(pairs[:10]) == 0  # idempotent
        read = index.items_of_many(users)  # one pipeline across the masters
        assert read == [frozenset(f"item-{n % 7}-{k}" for k in range(3)) for n in range(60)]
        assert index.knows_item("item-3-2") and not index.knows_item("nothing")
        assert index.n_users == 60 and index.n_pairs == len(pairs)
        counts = keys_per_master(cluster, f"{unique_name}:seen:*")
        assert sum(counts) == 60
        assert sum(1 for count in counts if count) == len(counts)  # every master holds some
    finally:
        index.close()
        delete_prefix(cluster, unique_name)


def test_the_catalogue_puts_and_gets_on_a_cluster(
    cluster_url: str, cluster: redis.cluster.RedisCluster, unique_name: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=cluster_url, redis_prefix=unique_name, data_dir=tmp_path)
    store = open_catalogue(settings)
    try:
        assert isinstance(store, RedisCatalogue)
        meta = ItemMetadata.model_validate({"categories": ["x"], "labels": {"color": "red"}})
        assert store.put({"a": meta, "b": ItemMetadata()}) == 1
        assert store.hide(["b"]) == 2 == store.version()
        found = store.get_many(["a", "b", "nobody"])
        assert found["a"].categories == ("x",) and found["a"].available
        assert not found["b"].available and "nobody" not in found
        assert set(store.changes(1)) == {"b"}
        assert cluster.exists(f"{{{unique_name}:items}}:version") == 1
    finally:
        store.close()
        delete_prefix(cluster, f"{{{unique_name}:items}}")


def test_impressions_are_recorded_on_a_cluster(
    cluster_url: str, cluster: redis.cluster.RedisCluster, unique_name: str
) -> None:
    store = RedisImpressionStore(cluster_url, unique_name, max_len=100)
    batch = [Impression(f"r{n}", f"u{n}", ("a", "b"), 1, "default", 1.0 + n) for n in range(5)]
    try:
        store.write(batch)
        assert [one.recommendation_id for one in store.recent(3)] == ["r4", "r3", "r2"]
    finally:
        store.close()
        delete_prefix(cluster, unique_name)


def test_a_whole_cluster_outage_is_a_connection_error_and_clients_recover(
    own_cluster: OwnCluster | None, cluster_url: str, unique_name: str
) -> None:
    """Last in this module: it kills every node (the data goes with them)."""
    if own_cluster is None:
        pytest.skip(f"the cluster {CLUSTER_ENV} names is not this test's to kill")
    index = RedisSeenIndex(cluster_url, unique_name, timeout_s=2.0)
    store = RedisModelStore(cluster_url, unique_name)
    try:
        index.add([("u1", "a")])
        assert store.current_version() is None
        own_cluster.kill()
        # What every component treats as an outage (redis-py's own error here would be a
        # RedisClusterException, which is not a RedisError): commands, pipelines, pub/sub.
        with pytest.raises(redis.ConnectionError):
            store.current_version()
        with pytest.raises(redis.ConnectionError):
            index.add([("u2", "b")])  # a pipeline over several masters
        with pytest.raises(redis.ConnectionError):
            store.wait_for_update(0.2)
        own_cluster.start()
        assert wait_for(lambda: answers(lambda: store.current_version() is None), 20.0)
        assert index.add([("u3", "c")]) == 1 and index.items_of("u3") == frozenset({"c"})
    finally:
        index.close()
        store.close()


def answers(call) -> bool:
    try:
        return bool(call())
    except redis.RedisError:
        return False


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def delete_prefix(client: redis.cluster.RedisCluster, prefix: str) -> None:
    for node in masters(client):
        direct = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
        for key in list(direct.scan_iter(match=f"{prefix}:*", count=1000)):
            direct.delete(key)
        direct.close()
