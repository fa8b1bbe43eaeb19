"""The one Redis factory: which client a URL gives, and what a bad URL is told (no Redis needed;
the real cluster is tests/integration/test_redis_cluster.py)."""

from __future__ import annotations

import socket
import time

import pytest
import redis
from pydantic import ValidationError

from contracts.redis_client import LazyCluster, connect, is_cluster, parse_url
from contracts.settings import Settings


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "the scheme must be"),
        ("http://localhost:6379", "the scheme must be"),
        ("redis+sentinel://localhost:26379", "the scheme must be"),
        ("redis+cluster://h:7000/1", "only database 0"),
        ("redis+cluster://h:port", "seed node 'h:port'"),
        ("redis+cluster://h:7000,", "seed node ''"),
        ("redis+cluster://", "seed node ''"),
        ("redis://localhost:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ],
)
def test_a_bad_url_is_refused_saying_why(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="Redis URL") as error:
        parse_url(url)
    assert problem in str(error.value)


def test_cluster_urls_keep_credentials_tls_and_options_for_every_seed() -> None:
    target = parse_url("rediss+cluster://me:pw@a:7000,[::1]:7001,b/0?health_check_interval=5")
    assert target.cluster and target.seeds == (("a", 7000), ("::1", 7001), ("b", 6379))
    assert target.url == "rediss://me:pw@a:7000/0?health_check_interval=5"
    assert not parse_url("unix:///run/redis.sock?db=1").cluster


def test_connect_gives_a_single_server_client_or_a_lazy_cluster_client() -> None:
    single = connect("redis://127.0.0.1:1/0", socket_timeout=1)  # connects on first use only
    assert isinstance(single, redis.Redis) and not is_cluster(single)
    cluster = connect("redis+cluster://127.0.0.1:1", socket_timeout=1)
    assert isinstance(cluster, LazyCluster) and is_cluster(cluster)
    single.close()
    cluster.close()


def test_an_unreachable_cluster_is_a_connection_error_at_first_use_not_at_start() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = connect(f"redis+cluster://127.0.0.1:{port}", socket_timeout=1)
    started = time.monotonic()
    for _ in range(2):  # and again on the next use, which tries anew
        with pytest.raises(redis.ConnectionError, match="Redis Cluster"):
            client.get("key")
    assert time.monotonic() - started < 10
    client.close()


def test_settings_refuse_a_bad_url_and_braces_in_a_cluster_prefix() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="localhost:6379")
    with pytest.raises(ValidationError, match="CCD_REDIS_PREFIX"):
        Settings(redis_url="redis+cluster://h:7000", redis_prefix="{ccd}")
    assert Settings(redis_url="redis://h:6379/0", redis_prefix="{ccd}").redis_prefix == "{ccd}"
    assert Settings(redis_url="redis+cluster://h:7000,h:7001").uses_redis
