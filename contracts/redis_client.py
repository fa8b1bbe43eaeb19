"""The one way every component connects to Redis: ``connect(url)``, one server or a Redis Cluster.

URL forms (``CCD_REDIS_URL``):

- ``redis://[[user]:password@]host[:port][/db][?option=value...]``, ``rediss://...`` (TLS) and
  ``unix://path``: one redis-server, read by redis-py as it always was (``redis.Redis``).
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]...][?option=value...]`` and
  ``rediss+cluster://...`` (TLS): a Redis Cluster (``redis.cluster.RedisCluster``). The hosts are
  seed nodes: the client learns every master and the slots it owns from the first one that
  answers (``CLUSTER SLOTS``), so one seed is enough and more let a client start while a seed is
  down. A cluster has only database 0: ``/0`` or no path. Options are redis-py's, as in a
  ``redis://`` URL.

Why a scheme rather than a query option such as ``?cluster=1``: cluster mode changes the
protocol the client speaks (routing each key to the master owning its slot, following ``MOVED``
and ``ASK``), not a setting of one connection, and the scheme is where a URL says how to speak
to the host (``rediss`` for TLS). A tool that does not know ``redis+cluster://`` refuses it at
once, where an unknown query option may be ignored: a single-server client pointed at one master
of a cluster works for the keys of that master's slots only and fails on the others with
``MOVED`` errors, far from the cause. The ``+`` form follows the compound schemes of other URL
conventions (SQLAlchemy's ``postgresql+psycopg://``, kombu's ``redis+socket://``).

Keys in a cluster: an atomic step (a Lua script, a ``MULTI``/``EXEC`` transaction, an ``MGET``)
may only touch keys of one hash slot. A component whose steps span several keys puts them under
one hash tag on a cluster (``hash_tagged``): the model store and the writer lease under
``{<prefix>}``, the item catalogue under ``{<prefix>:items}``. On one server the names stay as
they always were, so a single-node deployment keeps its data with no migration. The seen-items
sets carry their per-user tag in every mode (``service.seen_store``).

A cluster client is made on first use (``LazyCluster``): redis-py's ``RedisCluster`` asks the
seeds for the cluster's layout in its constructor, and again whenever a node stops answering,
and raises ``RedisClusterException`` ("cannot be connected", which is not a ``redis.RedisError``)
when none answers. Made lazily, a process starts while the cluster is down, as it does with one
server; and that failure, at start or mid-run, is raised as ``redis.ConnectionError``, which
every component already handles as an outage (retry, 503, one log line). Other
``RedisClusterException``s (a seed without cluster mode, keys of one step in several slots) are
mistakes of configuration or code and stay as they are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
# Each cluster scheme and the redis-py scheme of its seed nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
DEFAULT_PORT = 6379
_FORMS = (
    "redis://, rediss:// or unix:// (one server) or redis+cluster://host:port[,host:port...] / "
    "rediss+cluster://... (a Redis Cluster)"
)


@dataclass(frozen=True)
class RedisTarget:
    """What a URL names. ``url`` is a URL redis-py reads: the given one for one server, the
    first seed's (with the credentials and options) for a cluster; ``seeds`` the cluster's seed
    nodes as (host, port), empty for one server."""

    cluster: bool
    url: str
    seeds: tuple[tuple[str, int], ...] = ()


def parse_url(url: str) -> RedisTarget:
    """Reads ``url`` without connecting; ``ValueError`` naming the problem if it is malformed.

    Examples:
        >>> parse_url("redis://127.0.0.1:6379/0").cluster
        False
        >>> target = parse_url("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2?ssl_cert_reqs=none")
        >>> target.cluster, target.seeds
        (True, (('10.0.0.1', 7000), ('10.0.0.2', 6379)))
        >>> target.url
        'redis://:secret@10.0.0.1:7000?ssl_cert_reqs=none'
        >>> parse_url("redis+cluster://10.0.0.1:7000/2")
        Traceback (most recent call last):
        ...
        ValueError: Redis URL 'redis+cluster://10.0.0.1:7000/2': a Redis Cluster has only ...
    """
    scheme, separator, rest = (url or "").partition("://")
    scheme = scheme.lower()
    if not separator or (scheme not in SINGLE_SCHEMES and scheme not in CLUSTER_SCHEMES):
        raise ValueError(f"Redis URL {url!r}: the scheme must be {_FORMS}")
    if scheme in SINGLE_SCHEMES:
        from redis.connection import parse_url as redis_parse_url

        try:
            redis_parse_url(url)
        except ValueError as error:
            raise ValueError(f"Redis URL {url!r}: {error}") from None
        return RedisTarget(cluster=False, url=url)
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    location, tail = rest[:end], rest[end:]
    credentials, _, hosts = location.rpartition("@")
    path = tail.partition("?")[0]
    if path not in ("", "/", "/0"):
        raise ValueError(f"Redis URL {url!r}: a Redis Cluster has only database 0, not {path!r}")
    seeds = tuple(_seed(url, host) for host in hosts.split(","))
    base = f"{CLUSTER_SCHEMES[scheme]}://{credentials + '@' if credentials else ''}"
    return RedisTarget(cluster=True, url=base + hosts.split(",")[0] + tail, seeds=seeds)


def _seed(url: str, host: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
    except ValueError as error:
        raise ValueError(f"Redis URL {url!r}: seed node {host!r}: {error}") from None
    if not parts.hostname or parts.username is not None:
        raise ValueError(f"Redis URL {url!r}: seed node {host!r} is not host[:port]")
    return parts.hostname, DEFAULT_PORT if port is None else port


def connect(
    url: str,
    *,
    socket_timeout: float,
    socket_connect_timeout: float | None = None,
    decode_responses: bool = False,
) -> Any:
    """A client for ``url``: ``redis.Redis`` for one server, a ``LazyCluster`` (a
    ``redis.cluster.RedisCluster`` made on first use) for a cluster. Neither connects here."""
    target = parse_url(url)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout or socket_timeout,
        "decode_responses": decode_responses,
    }
    if target.cluster:
        return LazyCluster(target, options)
    import redis

    return redis.Redis.from_url(target.url, **options)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from ``connect``) speaks to a Redis Cluster."""
    return isinstance(client, LazyCluster)


def hash_tagged(name: str, cluster: bool) -> str:
    """``name`` as the prefix of keys that must share one hash slot: ``{name}`` on a cluster
    (Redis hashes only what is inside the first braces), ``name`` unchanged on one server, so
    that a single-node deployment keeps its key names.

    Examples:
        >>> hash_tagged("ccd", cluster=True) + ":current"
        '{ccd}:current'
        >>> hash_tagged("ccd:slot:als", cluster=False) + ":current"
        'ccd:slot:als:current'
    """
    if not cluster:
        return name
    if "{" in name or "}" in name:
        raise ValueError(f"key prefix {name!r}: braces would change its Redis Cluster hash tag")
    return f"{{{name}}}"


def _unreachable_as_connection_error(function: Any) -> Any:
    """``function`` raising ``redis.ConnectionError`` where redis-py raises
    ``RedisClusterException`` because no node could be reached."""
    import redis
    from redis.exceptions import RedisClusterException

    def unreachable_as_connection_error(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RedisClusterException as error:
            if isinstance(error.__cause__, redis.ConnectionError | redis.TimeoutError | OSError):
                raise redis.ConnectionError(f"Redis Cluster: {error}") from error
            raise

    return unreachable_as_connection_error


class LazyCluster:
    """A ``redis.cluster.RedisCluster`` made on first use (see the module docstring); every
    attribute is the cluster client's. While no seed answers, each use raises
    ``redis.ConnectionError`` and the next one tries again."""

    def __init__(self, target: RedisTarget, options: dict[str, Any]) -> None:
        self.target = target
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The ``RedisCluster``, made now if it was not yet."""
        if self._client is None:
            from redis.cluster import ClusterNode, RedisCluster

            with self._lock:
                if self._client is None:
                    seeds = [ClusterNode(host, port) for host, port in self.target.seeds[1:]]
                    make = _unreachable_as_connection_error(RedisCluster.from_url)
                    client = make(self.target.url, startup_nodes=seeds, **self._options)
                    # Every path that re-reads the layout (commands, pipelines) goes through it.
                    manager = client.nodes_manager
                    manager.initialize = _unreachable_as_connection_error(manager.initialize)
                    self._client = client
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
