"""Container health checks for docker-compose.yml; exit 0 = healthy, 1 = not.

    python scripts/healthcheck.py http URL        # the URL answers 2xx (server: /health/ready)
    python scripts/healthcheck.py trainer         # the trainer is a live member of its group
    python scripts/healthcheck.py indexer         # `ccd indexer` likewise, in its own group

The trainer serves no HTTP; it is healthy while its Kafka consumer is a member of the consumer
group ``CCD_KAFKA_GROUP_ID`` (kafka-python heartbeats from a background thread, so a long block
update does not make it unhealthy). Settings come from the same ``CCD_*`` variables as the trainer.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):  # HTTPError (e.g. 503) is a URLError
        return False


def group_members(bootstrap_servers: str, group_id: str) -> int:
    """Members of ``group_id`` right now (0 when the group is empty or unknown)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=TIMEOUT_S * 1000
    )
    try:
        description = admin.describe_groups([group_id])[group_id]
        return len(description.get("members") or [])
    finally:
        admin.close()


def trainer_ok(role: str = "trainer") -> bool:
    """The trainer (group ``CCD_KAFKA_GROUP_ID``) or ``ccd indexer`` (``role`` "indexer",
    group ``CCD_INDEXER_GROUP_ID``) is a member of its consumer group."""
    from contracts.settings import Settings

    settings = Settings()
    if not settings.uses_kafka:
        return True  # embedded log: nothing outside the process to check
    group = settings.indexer_group_id if role == "indexer" else settings.kafka_group_id
    try:
        return group_members(settings.kafka_bootstrap_servers, group) > 0
    except Exception as error:  # noqa: BLE001 - any failure to ask means "not healthy"
        print(f"{role} health check failed: {error}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) == 2:
        return 0 if http_ok(argv[1]) else 1
    if argv in (["trainer"], ["indexer"]):
        return 0 if trainer_ok(argv[0]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
