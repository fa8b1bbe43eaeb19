"""The one settings class shared by the trainer, the server and the CLI.

Every field can be set with an environment variable prefixed ``CCD_`` (for example
``CCD_KAFKA_BOOTSTRAP_SERVERS``). With neither Kafka nor Redis configured, every process uses the
embedded event log and model store under ``data_dir``.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.events import DEFAULT_EVENT_WEIGHTS, EventWeights
from contracts.redis_client import parse_url

DEFAULT_GROUP_ID = "ccd-trainer"


def parse_ab(text: str) -> list[tuple[str, int]]:
    """``slot:weight,...`` as (slot, weight) pairs; raises ``ValueError`` if malformed.

    Examples:
        >>> parse_ab("ccd:50,als:50")
        [('ccd', 50), ('als', 50)]
        >>> parse_ab("")
        []
    """
    arms: list[tuple[str, int]] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, weight = part.partition(":")
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", name) or not weight.isdigit() or int(weight) < 1:
            raise ValueError(
                f"A/B arm {part!r} is not slot:weight (slot of a-z 0-9 _ -, weight >= 1)"
            )
        if name in dict(arms):
            raise ValueError(f"A/B arm {name!r} named twice")
        arms.append((name, int(weight)))
    if len(arms) == 1:
        raise ValueError("an A/B split needs at least two arms")
    return arms


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CCD_", extra="ignore")

    # --- event stream -------------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers; unset = embedded SQLite event log"
    )
    kafka_topic: str = Field("interactions", description="Topic of interaction events")
    kafka_dead_letter_topic: str = Field(
        "interactions.dead-letter", description="Where malformed messages go"
    )
    kafka_group_id: str = Field(DEFAULT_GROUP_ID, description="Consumer group of the trainer")
    kafka_partitions: int = Field(
        1,
        ge=1,
        description="Partitions of the events topic when this service creates it (events are "
        "keyed by user, so each user's events stay in order); an existing topic keeps its count",
    )
    kafka_skip_deleted: bool = Field(
        False,
        description="When the trainer must read records Kafka's retention already deleted: "
        "false = stop with an error; true = go on from the oldest record left (deleted ones "
        "are never learned)",
    )
    log_retention_s: float = Field(
        0.0,
        ge=0,
        description="The embedded event log deletes events every consumer group (the trainer's "
        "and any other) has committed once they are this many seconds old; 0 = keep every event "
        "(what a server's seen-items replay reads)",
    )

    # --- model store --------------------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis URL; unset = embedded file store. One server: redis://host:port/0 "
        "(rediss:// for TLS, unix://path); a Redis Cluster: redis+cluster://host:port[,host:port"
        "...] (rediss+cluster:// for TLS), any masters or replicas as seeds "
        "(contracts.redis_client)",
    )
    redis_prefix: str = Field(
        "ccd",
        description="Prefix of every Redis key and channel (no braces on a Redis Cluster: it "
        "becomes part of the keys' hash tags)",
    )
    keep_versions: int = Field(5, ge=1, description="Model versions kept for rollback")

    # --- seen items (per-user state) ----------------------------------------------------------
    seen_store: Literal["memory", "redis"] = Field(
        "memory",
        description="Where servers read each user's seen items: memory = every server replays "
        "the event log into its own index; redis = per-user sets in Redis written by `ccd "
        "indexer` (needs Kafka and Redis)",
    )
    indexer_group_id: str = Field(
        "ccd-indexer", description="Kafka consumer group of `ccd indexer`"
    )
    seen_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Longest wait of a server for a user's seen items in Redis before it "
        "answers 503",
    )

    # --- local state --------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("ccd-data"), description="Embedded event log, model store and trainer checkpoints"
    )

    # --- trainer ------------------------------------------------------------------------------
    learner: Literal["ccd", "bpr", "als"] = Field(
        "ccd",
        description="Block learner: the CCD update, the BPR-MF fine-tuning baseline, or iALS "
        "retrained from scratch on every event so far (what a team would run from a cron job)",
    )
    learner_variant: Literal["best", "paper"] = Field(
        "best",
        description="Configuration of the ccd learner: best (the product's, models.ccd.BEST) or "
        "paper (the official code's behaviour)",
    )
    event_weights: str = Field(
        DEFAULT_EVENT_WEIGHTS,
        description="What each event type teaches, type:weight,...: > 0 a positive of that "
        "strength, < 0 an explicit negative, 0 nothing; * = untyped and unlisted types",
    )
    base_block_size: int = Field(20_000, ge=1, description="Events in the first (base) block")
    block_size: int = Field(5_000, ge=1, description="A block closes after this many events ...")
    block_interval_s: float = Field(60.0, gt=0, description="... or after this many seconds")
    min_block_size: int = Field(
        100, ge=1, description="A block closed by time needs at least this many events"
    )
    eval_k: int = Field(20, ge=1, description="K of the prequential Recall@K / NDCG@K")
    eval_users: int = Field(
        1_000,
        ge=0,
        description="Prequential evaluation on at most this many users of each block, drawn at "
        "random (0 = all; full ranking costs a catalogue's worth of scores per user)",
    )
    seed: int = Field(0, description="Seed of the trainer's random generators")
    torch_threads: int = Field(0, ge=0, description="torch threads in the trainer (0 = default)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu",
        description="Where the trainer's learner trains: cpu, cuda (refused when no GPU is "
        "available) or auto (cuda when torch sees a GPU, else cpu); random draws and iALS fits "
        "stay on the CPU, checkpoints hold CPU tensors",
    )
    max_block_events: int = Field(
        200_000,
        ge=1,
        description="A block closes at this many events whatever the sizes above (bounds the "
        "memory of an open block; a larger base block is split into several)",
    )
    dedup_window: int = Field(
        500_000,
        ge=1,
        description="Recent event keys the trainer remembers to drop re-delivered events "
        "(about 150 bytes each)",
    )
    lease_ttl_s: float = Field(
        15.0,
        gt=0,
        description="Writer lease of the trainer: a standby takes over this long after the "
        "holder stops renewing it (Redis lease; the embedded file lock is released at death)",
    )
    publish_retry_initial_s: float = Field(
        1.0, gt=0, description="First wait before retrying a publish to an unreachable store"
    )
    publish_retry_max_s: float = Field(
        30.0, gt=0, description="Longest wait between publish retries (the wait doubles)"
    )

    # --- server -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `ccd serve` binds to")
    port: int = Field(8000, ge=1, le=65535, description="Port `ccd serve` binds to")
    max_k: int = Field(1000, ge=1, description="Largest k a request may ask for")
    ann_min_items: int = Field(
        200_000,
        ge=0,
        description="A model version with at least this many items gets an approximate (faiss "
        "IVF) item index for top-k, filters still exact on its candidates; 0 = exact top-k always",
    )
    reload_poll_s: float = Field(
        5.0, gt=0, description="Fallback poll for new model versions (pub/sub is the fast path)"
    )
    max_events_per_request: int = Field(10_000, ge=1, description="Largest POST /events batch")
    log_level: str = Field("INFO", description="Python logging level")
    api_key: SecretStr | None = Field(
        None,
        description="Key the /admin endpoints require in header X-API-Key; unset or empty = "
        "admin endpoints disabled",
    )
    events_api_key: SecretStr | None = Field(
        None,
        description="Key POST /events requires in header X-API-Key; unset or empty = writes "
        "need no key (set it in production)",
    )
    record_impressions: bool = Field(
        True,
        description="Record what each recommendation answer showed (its recommendation_id, "
        "user, items, version, arm) for outcome attribution",
    )
    impressions_max: int = Field(
        100_000,
        ge=1,
        description="Impressions kept: MAXLEN of the Redis stream, rows of the embedded table "
        "and entries of the server's in-memory attribution index",
    )
    attribution_window_s: float = Field(
        1800.0,
        gt=0,
        description="An event for (user, item) this many seconds after an impression that "
        "showed the item counts as a hit for that impression's version and arm",
    )
    online_window_s: float = Field(
        3600.0,
        gt=0,
        description="Sliding window of GET /stats/online and the dashboard's online metrics "
        "(impressions made this long ago at most)",
    )
    model_slot: str = Field(
        "",
        pattern=r"^[a-z0-9_-]{0,32}$",
        description="Named model slot a trainer publishes to (its own store keys or folder, "
        "lease, checkpoints and, unless set, consumer group ccd-trainer-SLOT); empty = the "
        "default slot",
    )
    ab: str = Field(
        "",
        description="A/B split of a server's users between model slots by a stable hash of the "
        "user id, as slot:weight,... (e.g. ccd:50,als:50); empty = the default slot only",
    )

    # --- item catalogue and request filters -------------------------------------------------
    catalogue_poll_s: float = Field(
        0.2, gt=0, description="How often a server reads catalogue writes made by other servers"
    )
    max_items_per_request: int = Field(10_000, ge=1, description="Largest PUT /items batch")
    max_filter_ids: int = Field(
        10_000, ge=1, description="Most item ids one request may name in exclude or in include"
    )
    new_item_half_life_s: float = Field(
        604_800.0,
        gt=0,
        description="new_item_boost halves for every this many seconds since an item was added",
    )

    @field_validator("ab")
    @classmethod
    def _parse_ab(cls, value: str) -> str:
        parse_ab(value)  # refused at start-up, naming the variable
        return value

    @model_validator(mode="after")
    def _slot_consumer_group(self) -> Settings:
        """A slot's trainer reads the stream in a group of its own (the default slot's trainer
        keeps ``ccd-trainer``), so two learners see the same events."""
        if self.model_slot and self.kafka_group_id == DEFAULT_GROUP_ID:
            self.kafka_group_id = f"{DEFAULT_GROUP_ID}-{self.model_slot}"
        return self

    def for_slot(self, slot: str) -> Settings:
        """These settings with ``model_slot`` = ``slot`` (a server's view of one A/B arm)."""
        return self.model_copy(update={"model_slot": slot})

    @property
    def store_prefix(self) -> str:
        """Prefix of the model store's and the writer lease's Redis keys: the slot's own."""
        return (
            f"{self.redis_prefix}:slot:{self.model_slot}" if self.model_slot else self.redis_prefix
        )

    @property
    def slot_dir(self) -> Path:
        """Where the slot's embedded model store, checkpoints and writer lock live."""
        return self.data_dir / "slots" / self.model_slot if self.model_slot else self.data_dir

    @property
    def ab_arms(self) -> list[tuple[str, int]]:
        """The parsed ``ab``: (slot, weight) pairs; empty without an A/B split."""
        return parse_ab(self.ab)

    @field_validator("redis_url")
    @classmethod
    def _parse_redis_url(cls, value: str | None) -> str | None:
        if value:
            parse_url(value)  # refused at start-up, naming the variable
        return value

    @field_validator("event_weights")
    @classmethod
    def _parse_event_weights(cls, value: str) -> str:
        EventWeights.parse(value)  # refused at start-up, naming the variable
        return value

    @cached_property
    def weights_of_events(self) -> EventWeights:
        return EventWeights.parse(self.event_weights)

    @model_validator(mode="after")
    def _check_rules_between_fields(self) -> Settings:
        """Rules between fields, refused at start-up naming the ``CCD_*`` variables, rather than
        a warning at every later block: a block size above the cap closes every block early,
        and a first publish retry above the longest one never backs off."""
        problems = []
        if self.block_size > self.max_block_events:
            problems.append(
                f"CCD_BLOCK_SIZE={self.block_size} is above CCD_MAX_BLOCK_EVENTS="
                f"{self.max_block_events}: every block would close early at the cap"
            )
        if self.publish_retry_initial_s > self.publish_retry_max_s:
            problems.append(
                f"CCD_PUBLISH_RETRY_INITIAL_S={self.publish_retry_initial_s} is above "
                f"CCD_PUBLISH_RETRY_MAX_S={self.publish_retry_max_s}: the first wait would be "
                "longer than the longest"
            )
        if self.seen_store == "redis" and not (self.uses_kafka and self.uses_redis):
            problems.append(
                "CCD_SEEN_STORE=redis needs CCD_KAFKA_BOOTSTRAP_SERVERS and CCD_REDIS_URL (the "
                "indexer reads Kafka and writes Redis)"
            )
        cluster = bool(self.redis_url) and parse_url(self.redis_url or "").cluster
        if cluster and ("{" in self.redis_prefix or "}" in self.redis_prefix):
            problems.append(
                f"CCD_REDIS_PREFIX={self.redis_prefix!r} holds a brace: on a Redis Cluster "
                "braces choose the keys' hash slot (contracts.redis_client)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def uses_kafka(self) -> bool:
        return bool(self.kafka_bootstrap_servers)

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url)

    @cached_property
    def event_log_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def model_store_dir(self) -> Path:
        return self.slot_dir / "models"

    @property
    def checkpoint_dir(self) -> Path:
        return self.slot_dir / "checkpoints"
