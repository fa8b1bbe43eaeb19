"""The trainer process: event stream -> blocks -> evaluate, learn, publish, checkpoint, commit.

For every closed block, in this order:
1. split it (``models.data.split_block``, no test part: the stream itself is the test),
2. evaluate the deployed student on it prequentially (before it has seen the block),
3. ``learner.learn_block(block)``,
4. checkpoint the trainer (learner, id maps, seen pairs, dedup window, log positions, and the
   block's publish as *pending*, under a fresh ``publish_id``),
5. publish the student to the model store (its metadata carries the ``publish_id``),
6. commit the block's log positions.
A crash before 4 re-reads the uncommitted events on restart and learns the block again from the
previous checkpoint. After 4 the block is never learned again: its positions are in the
checkpoint, so re-read records are skipped by position, and on restart the pending publish is
looked up in the store by its ``publish_id`` and published only if it is not there (crash
between 4 and 5). Re-delivered copies of applied events are dropped by their ``dedup_key()``.
The checkpoint comes first because a model that is published but not checkpointed could only be
re-learned (applying the block twice to the state that follows); a checkpoint not yet published
is just a publish to finish. Only the holder of the writer lease (``trainer.lease``) runs this;
the publish is fenced by it. The README's "Guarantees" section lists the guarantees;
tests/faults/ tests them.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
import torch

from contracts.event_log import EventConsumer, LogRecord, next_offsets, open_consumer
from contracts.events import InteractionEvent, parse_event, shown_fields
from contracts.model_store import ModelSnapshot, ModelStore, StaleWriterError, open_model_store
from contracts.settings import Settings
from contracts.throttle import WarningThrottle
from models.api import BlockData, BlockLearner, Embeddings, Interactions
from models.data import split_block
from models.metrics import embedding_scorer, ranking_metrics
from trainer.blocks import BlockPolicy, DedupWindow, OpenBlock, dedup_hash
from trainer.checkpoint import load_latest_checkpoint, save_checkpoint
from trainer.device import learner_device, resolve_device
from trainer.faults import CrashPlan
from trainer.feedback import typed_pairs
from trainer.ids import IdMap
from trainer.lease import LeaseLost, WriterLease, open_lease

log = logging.getLogger(__name__)

POLL_RECORDS = 1_000
POLL_TIMEOUT_S = 1.0  # upper bound on how long a stop request waits
# The bpr learner's settings for streaming blocks: a higher rate and smaller batches than the
# baseline's defaults, so that blocks of a few thousand events train in a few dozen steps.
STREAM_BPR = {"lr": 0.01, "batch_size": 256}
# The als learner: 64 factors (the size of the best variant's iALS teacher members; a team
# running iALS would not pick the student's size), hyper-parameters tuned on the base block.
STREAM_ALS = {"dim": 64}
_PAIR_SHIFT = 32  # a seen (user, item) pair is stored as user << 32 | item


@dataclass
class TrainerStats:
    """Counters for logs and metrics; read from other threads without locking (plain values)."""

    events_consumed: int = 0  # valid, new events added to blocks
    malformed: int = 0
    unknown_fields: int = 0  # valid events carrying fields the contract does not know (ignored)
    dead_lettered: int = 0
    dead_lettered_before: int = 0  # malformed, re-read after a restart, parked the first time
    duplicates: int = 0
    skipped_applied: int = 0  # re-read after a crash, already in the checkpoint
    blocks: int = 0
    recovered_publishes: int = 0  # checkpointed before a crash, published after the restart
    last_version: int | None = None
    last_publish_time: float | None = None
    last_block_seconds: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_learner(settings: Settings) -> tuple[BlockLearner, str]:
    """The learner ``settings.learner`` names, and that name, on ``settings.device``. A learner
    that cannot be built (a broken install) or cannot run on the device asked for stops
    start-up: serving another model than configured is worse."""
    if settings.learner == "ccd":
        from models.ccd import CCDConfig, CCDLearner

        config = CCDConfig.preset("stream", settings.learner_variant, seed=settings.seed)
        device = _device_for(settings, _takes_device(CCDLearner), "ccd")
        extra = {} if device is None else {"device": device}
        return CCDLearner(config, **extra), "ccd"
    if settings.learner == "als":
        from models.als import ALSLearner

        device = _device_for(settings, _takes_device(ALSLearner), "als")
        extra = {} if device is None else {"device": device}
        return ALSLearner(seed=settings.seed, **STREAM_ALS, **extra), "als"
    from models.baselines import FineTuneLearner

    device = _device_for(settings, _takes_device(FineTuneLearner), "bpr")
    extra = {} if device is None else {"device": device}
    return FineTuneLearner(seed=settings.seed, **STREAM_BPR, **extra), "bpr"


def _takes_device(learner_class: type) -> bool:
    return "device" in inspect.signature(learner_class).parameters


def _device_for(settings: Settings, takes_device: bool, learner: str) -> str | None:
    """The device argument for ``learner`` (None: it takes none and runs on the CPU).
    ``CCD_DEVICE=cuda`` without a GPU, or for a learner that cannot take a device, raises
    ``DeviceUnavailable``; ``auto`` settles for the CPU then, and says so."""
    device = resolve_device(settings.device, torch.cuda.is_available())
    if settings.device == "auto" and device != "cpu" and not takes_device:
        log.info("CCD_DEVICE=auto: learner %s takes no device argument, it runs on cpu", learner)
        device = "cpu"
    chosen = learner_device(device, takes_device, learner)
    log.info("learner %s runs on %s", learner, chosen or "cpu")
    return chosen


def run_trainer(
    settings: Settings, stop: threading.Event | None = None, max_blocks: int | None = None
) -> None:
    """Run the trainer until ``stop`` is set or ``max_blocks`` blocks were published. It first
    waits for the writer lease (another trainer may hold it), then resumes from the checkpoint;
    if it loses the lease it stands by again. While the event log or the model store cannot be
    reached at start, it retries."""
    stop = stop or threading.Event()
    lease = open_lease(settings)
    try:
        while not stop.is_set():
            if not lease.acquire(stop):
                return
            try:
                trainer = _start_trainer(settings, stop, lease)
                if trainer is None:
                    return
                try:
                    trainer.run(stop, max_blocks)
                    return
                finally:
                    trainer.close()
            except LeaseLost as error:
                log.error("%s: standing by to take the lease again", error)
            finally:
                lease.release()
    finally:
        lease.close()


def _start_trainer(settings: Settings, stop: threading.Event, lease: WriterLease) -> Trainer | None:
    """A trainer, once Kafka/Redis answer; None if stopped while waiting for them."""
    import kafka.errors
    import redis

    delay = settings.publish_retry_initial_s
    while True:
        lease.check()
        try:
            return Trainer(settings, lease=lease)
        except (kafka.errors.KafkaError, redis.RedisError, OSError) as error:
            log.error("cannot start the trainer (%s); retrying in %.0f s", error, delay)
        if stop.wait(delay):
            return None
        delay = min(2 * delay, settings.publish_retry_max_s)


class Trainer:
    """One trainer over the configured (or given) consumer, store and learner. ``lease``: the
    writer lease its owner holds (``run_trainer`` takes it); None = unguarded (tests)."""

    def __init__(
        self,
        settings: Settings,
        consumer: EventConsumer | None = None,
        store: ModelStore | None = None,
        learner: BlockLearner | None = None,
        learner_name: str | None = None,
        lease: WriterLease | None = None,
    ) -> None:
        self.settings = settings
        self.lease = lease
        self.crash = CrashPlan.from_env()
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        torch.manual_seed(settings.seed)
        if learner is None:
            learner, learner_name = build_learner(settings)
        self.learner = learner
        self.learner_name = learner_name or type(learner).__name__
        self.consumer = consumer if consumer is not None else open_consumer(settings)
        self.store = store if store is not None else open_model_store(settings)
        self.policy = BlockPolicy.from_settings(settings)
        self.stats = TrainerStats()
        self.malformed_warnings = WarningThrottle()
        self.unknown_field_warnings = WarningThrottle()
        self.users = IdMap()
        self.items = IdMap()
        self.item_counts = np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(0, dtype=np.int64)  # sorted pair keys of closed blocks
        self.dedup = DedupWindow(settings.dedup_window)
        self.applied_offsets: dict[int, int] = {}  # per partition: next offset not in a block
        self.deployed: Embeddings | None = None
        self.pending: dict[str, Any] | None = None  # meta of a checkpointed, unpublished block
        self.block = self._open_block(0)
        try:
            self._restore()
            # Each partition resumes at the checkpoint's position (new ones at their start).
            self.consumer.resume(self.applied_offsets)
        except BaseException:
            self.close()
            raise

    def _open_block(self, index: int) -> OpenBlock:
        return OpenBlock(
            index, self.policy, known_users=len(self.users), known_items=len(self.items)
        )

    # --- state --------------------------------------------------------------------------------

    def _restore(self) -> None:
        state = load_latest_checkpoint(self.settings.checkpoint_dir)
        if state is None:
            return
        if state["learner"] != self.learner_name:
            raise RuntimeError(
                f"the checkpoint in {self.settings.checkpoint_dir} was written by learner "
                f"{state['learner']!r}, this trainer runs {self.learner_name!r}: set "
                f"CCD_LEARNER={state['learner']} or remove the data directory"
            )
        self.learner.load_state_dict(state["learner_state"])
        self.users, self.items = _id_map(state["user_ids"]), _id_map(state["item_ids"])
        self.item_counts = state["item_counts"].numpy()
        self.seen = state["seen"].numpy()
        self.dedup = DedupWindow(self.settings.dedup_window, state["dedup"].tolist())
        self.applied_offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        counters = state["stats"]
        self.stats.blocks = int(counters["blocks"])
        self.stats.last_version = counters["last_version"]
        self.pending = state.get("pending")
        if self.pending is not None:
            self._settle_pending()
        self.deployed = self.learner.student()
        self.block = self._open_block(int(state["next_block"]))
        log.info(
            "resumed before block %d: %d users, %d items, model version %s, log positions %s%s",
            self.block.index,
            len(self.users),
            len(self.items),
            self.stats.last_version,
            self.applied_offsets,
            "; the last block's publish is pending" if self.pending else "",
        )

    def _checkpoint(self) -> None:
        state = {
            "next_block": self.block.index + 1,
            "learner": self.learner_name,
            "learner_state": self.learner.state_dict(),
            "user_ids": self.users.to_json(),
            "item_ids": self.items.to_json(),
            "item_counts": torch.from_numpy(self.item_counts),
            "seen": torch.from_numpy(self.seen),
            "dedup": torch.from_numpy(self.dedup.to_array()),
            "offsets": dict(self.applied_offsets),
            "stats": {"blocks": self.stats.blocks, "last_version": self.stats.last_version},
            "pending": self.pending,
        }
        epoch = 0 if self.lease is None else self.lease.epoch
        save_checkpoint(self.settings.checkpoint_dir, self.block.index, state, epoch=epoch)

    # --- main loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, max_blocks: int | None = None) -> None:
        stop = stop or threading.Event()
        done = 0
        log.info("trainer started (learner %s)", self.learner_name)
        if not self._finish_pending_publish(stop):
            return
        while not stop.is_set() and (max_blocks is None or done < max_blocks):
            if self.lease is not None:
                self.lease.check()
            left = self.block.seconds_left()  # <= 0: due, but waits for min_block_size events
            timeout = min(POLL_TIMEOUT_S, left) if left > 0 else POLL_TIMEOUT_S
            records = self.consumer.poll(POLL_RECORDS, timeout)
            for record in records:
                self._ingest(record)
                if self.block.should_close():
                    done += self._close_block(stop)
                    if stop.is_set() or (max_blocks is not None and done >= max_blocks):
                        break  # the rest stays uncommitted and is read again next time
            else:
                if self.block.should_close():
                    done += self._close_block(stop)
                self._commit_eventless()
        log.info("trainer stopped after %d blocks this run", done)

    def _ingest(self, record: LogRecord) -> None:
        """Add one raw message to the open block (or count why not)."""
        if record.offset < self.applied_offsets.get(record.partition, 0):
            self.stats.skipped_applied += 1  # already inside a checkpointed block
            return
        self.block.add_record(record)
        try:
            event, unknown = parse_record(record)
        except Exception as error:  # whatever a message holds, it must not stop the trainer
            self._reject(record, error)
            return
        if unknown:
            self._count_unknown_fields(record, unknown)
        key = dedup_hash(event.dedup_key())
        if not self.dedup.add(key):
            self.stats.duplicates += 1
            return
        user, item = self.users.add(event.user_id), self.items.add(event.item_id)
        weight = self.settings.weights_of_events.of(event.type, event.weight)
        self.block.add_event(user, item, event.timestamp, key, weight)
        self.stats.events_consumed += 1
        if len(self.block) == max(1, self.block.size_limit() // 2):
            self.crash.hit("filling", self.block.index)

    def _commit_eventless(self) -> None:
        """While the open block holds no event, everything it read was dead-lettered or a copy
        of an applied event: commit past it now, so that junk alone still moves the offsets
        and is not read (and parked) again after a restart."""
        if len(self.block) or not self.block.spans or self.pending is not None:
            return
        records = self.block.last_records()
        for partition, offset in next_offsets(records).items():
            self.applied_offsets[partition] = max(self.applied_offsets.get(partition, 0), offset)
        self._commit(records)
        self.block.forget_records()

    def _count_unknown_fields(self, record: LogRecord, unknown: list[str]) -> None:
        """A valid event with fields the contract does not know: applied, the fields ignored;
        counted, and logged without a flood (a producer that adds a field sends it in every
        event)."""
        self.stats.unknown_fields += 1
        throttle = self.unknown_field_warnings
        if throttle.allow() or throttle.summary():
            log.warning(
                "event at %d/%d has fields the event contract does not know: %s; they are "
                "ignored (%d such events so far)",
                record.partition,
                record.offset,
                shown_fields(unknown),
                self.stats.unknown_fields,
            )

    def _reject(self, record: LogRecord, error: Exception) -> None:
        self.stats.malformed += 1
        reason = str(error).replace("\n", " ")[:500]
        if self.malformed_warnings.allow():
            log.warning(
                "malformed message at %d/%d (%s): %r",
                record.partition,
                record.offset,
                reason,
                None if record.value is None else record.value[:200],
            )
        elif unlogged := self.malformed_warnings.summary():
            log.warning(
                "%d more malformed messages (%d in all; latest at %d/%d: %s); "
                "each is dead-lettered",
                unlogged,
                self.stats.malformed,
                record.partition,
                record.offset,
                reason,
            )
        try:
            if self.consumer.dead_letter(record, reason):
                self.stats.dead_lettered += 1
            else:
                self.stats.dead_lettered_before += 1
        except Exception as dead_letter_error:  # never let one bad message stall the stream
            log.error(
                "could not dead-letter %d/%d: %s",
                record.partition,
                record.offset,
                dead_letter_error,
            )

    # --- one block ----------------------------------------------------------------------------

    def _close_block(self, stop: threading.Event) -> int:
        """Process the open block; returns 1 if it was published, 0 if stopped before."""
        block, started = self.block, time.perf_counter()
        seconds: dict[str, float] = {}
        if block.capped():
            log.warning(
                "block %d closed at max_block_events=%d, below its configured size: the rest "
                "of it goes to block %d",
                block.index,
                self.policy.max_events,
                block.index + 1,
            )
        users = np.asarray(block.users, dtype=np.int64)
        items = np.asarray(block.items, dtype=np.int64)
        feedback = typed_pairs(pair_keys(users, items), np.asarray(block.weights, np.float32))
        pairs = feedback.positives  # repeats within a block count once
        data = split_block(
            torch.from_numpy(pairs >> _PAIR_SHIFT),
            torch.from_numpy(pairs & ((1 << _PAIR_SHIFT) - 1)),
            len(self.users),
            len(self.items),
            block.index,
            seed=self.settings.seed + block.index,
            with_test=False,
            weights=feedback.positive_weights,
        )
        data.negatives = _pairs_to_interactions(feedback.negatives, feedback.negative_weights)
        tick = time.perf_counter()
        metrics = self._prequential(pairs, block.index)
        seconds["evaluate"] = time.perf_counter() - tick

        tick = time.perf_counter()
        with self.crash.during("training", block.index):
            report = self.learner.learn_block(data)
        seconds["learn"] = time.perf_counter() - tick
        seconds.update({f"learn.{k}": v for k, v in report.stage_seconds.items()})
        if not self._await_lease(stop):
            return 0  # nothing durable happened: the block is read and learned again

        # From here on the block is part of the state, made durable before anyone sees it.
        self.item_counts = np.concatenate(
            [self.item_counts, np.zeros(len(self.items) - len(self.item_counts), np.int64)]
        )
        np.add.at(self.item_counts, items[feedback.is_positive_event], 1)
        self.seen = insert_sorted(self.seen, pairs)
        for partition, offset in next_offsets(block.last_records()).items():
            self.applied_offsets[partition] = max(self.applied_offsets.get(partition, 0), offset)
        self.stats.blocks += 1
        self.pending = meta = self._block_meta(block, data, metrics, seconds)
        tick = time.perf_counter()
        self._checkpoint()
        seconds["checkpoint"] = time.perf_counter() - tick
        self.crash.hit("checkpointed", block.index)

        tick = time.perf_counter()
        version = self._publish_pending(stop)
        if version is None:
            return 0  # stopped while the store was down: the next start publishes it
        seconds["publish"] = time.perf_counter() - tick
        self.crash.hit("published", block.index)
        self._commit(block.last_records())
        self.crash.hit("committed", block.index)
        self.stats.last_block_seconds = time.perf_counter() - started
        self.stats.last_metrics = metrics
        self._log_block(meta, seconds, version)
        self.block = self._open_block(block.index + 1)
        return 1

    def _await_lease(self, stop: threading.Event) -> bool:
        """Before a durable write: True once the writer lease is surely held (raises
        ``LeaseLost``), False if stopped while in doubt."""
        return self.lease is None or self.lease.wait_trusted(stop)

    def _settle_pending(self) -> None:
        """After a restart: if the checkpointed block's publish reached the store (found by its
        ``publish_id``), take its version; else it stays pending for ``run`` to publish."""
        assert self.pending is not None
        version = self._find_published(self.pending["publish_id"])
        if version is not None:
            log.info(
                "block %d was published as version %d before the restart",
                self.pending["block_index"],
                version,
            )
            self.stats.last_version = version
            self.pending = None

    def _finish_pending_publish(self, stop: threading.Event) -> bool:
        """Publish the checkpointed block the store did not get before a crash; False if
        stopped first."""
        if self.pending is None:
            return True
        log.warning(
            "block %d was checkpointed but not published: publishing it",
            self.pending["block_index"],
        )
        version = self._publish_pending(stop)
        if version is None:
            return False
        # Its log positions are committed with the next block's (a Kafka consumer cannot commit
        # before its first poll has joined the group); until then re-reads are skipped by them.
        self.stats.recovered_publishes += 1
        return True

    def _find_published(self, publish_id: str) -> int | None:
        """The version carrying ``publish_id``, among those newer than the last known one."""
        for version in reversed(self.store.versions()):
            if version <= (self.stats.last_version or 0):
                break
            if self.store.load_meta(version).get("publish_id") == publish_id:
                return version
        return None

    def _prequential(self, pairs: np.ndarray, block_index: int) -> dict[str, float]:
        """Recall/NDCG@eval_k of the deployed student on this block's pairs, full ranking,
        excluding (from ranking and targets) what each user interacted with in earlier blocks.
        At most ``eval_users`` users, drawn at random (measured: evaluating every user of a
        5,000-event block was ~80% of a block's stream-path cost). Users the student does not
        know are skipped; items it does not know count as misses."""
        if self.deployed is None:
            return {}
        fresh = pairs[~contains_sorted(self.seen, pairs)]
        users = np.unique(fresh >> _PAIR_SHIFT)
        if 0 < self.settings.eval_users < len(users):
            rng = np.random.default_rng([self.settings.seed & 0xFFFFFFFF, block_index])
            users = np.sort(rng.choice(users, self.settings.eval_users, replace=False))
            fresh = rows_of_users(fresh, users)
        earlier = rows_of_users(self.seen, users)
        k = self.settings.eval_k
        result = ranking_metrics(
            embedding_scorer(self.deployed),
            _pairs_to_interactions(fresh),
            [_pairs_to_interactions(earlier)],
            ks=(k,),
        )
        return {
            f"recall@{k}": result[f"recall@{k}"],
            f"ndcg@{k}": result[f"ndcg@{k}"],
            "users": result["users"],
        }

    def _block_meta(
        self,
        block: OpenBlock,
        data: BlockData,
        metrics: dict[str, float],
        seconds: dict[str, float],
    ) -> dict[str, Any]:
        """Metadata published with the version (the store adds version, checksum and sizes).
        ``events`` and ``event_digest`` (sum of the events' ``dedup_hash`` modulo 2**64, hex)
        let an auditor check which events a block holds; ``log_range`` is the first and last
        log position it spans per partition; ``publish_id`` identifies this publish (``writer``
        and ``lease_epoch``, added at publish time, name the trainer that published it)."""
        return {
            "block_index": block.index,
            "publish_id": uuid.uuid4().hex,
            "trained_at": time.time(),
            "data_range": {
                "first_timestamp": block.first_timestamp,
                "last_timestamp": block.last_timestamp,
            },
            "events": len(block),
            "event_digest": f"{block.key_digest:016x}",
            "log_range": block.log_range(),
            "n_users": data.n_users,
            "n_items": data.n_items,
            "new_users": data.n_users - block.known_users,
            "new_items": data.n_items - block.known_items,
            "train_pairs": len(data.train),
            "valid_pairs": len(data.valid),
            "prequential": metrics,
            "stage_seconds": dict(seconds),
            "learner": self.learner_name,
        }

    def _publish_pending(self, stop: threading.Event) -> int | None:
        """Publish the checkpointed state's student with ``self.pending`` as metadata, retrying
        while the store is down and the lease in doubt; None if stopped meanwhile."""
        assert self.pending is not None
        student = self.learner.student()
        snapshot = ModelSnapshot(
            user_ids=self.users.ids,
            item_ids=self.items.ids,
            user_embeddings=student.users.detach().cpu().numpy().astype(np.float32),
            item_embeddings=student.items.detach().cpu().numpy().astype(np.float32),
            item_popularity=self.item_counts.astype(np.float32),
            meta={
                **self.pending,
                "writer": None if self.lease is None else self.lease.holder,
                "lease_epoch": None if self.lease is None else self.lease.epoch,
            },
        )
        fence = None if self.lease is None else self.lease.fence

        def publish() -> int | None:
            if not self._await_lease(stop):
                return None
            try:
                # after: the checkpoint's last version, in case the store lost its counter.
                return self.store.publish(snapshot, fence, after=self.stats.last_version or 0)
            except StaleWriterError as error:
                raise LeaseLost(str(error)) from error

        version = self._retry_store(publish, stop)
        if version is not None:
            self.stats.last_publish_time = time.time()
            self.stats.last_version = version
            self.deployed = student
            self.pending = None
        return version

    def _retry_store(self, action: Callable[[], int | None], stop: threading.Event) -> int | None:
        """``action()``, retried with a doubling wait while the store is unreachable; None if
        stopped meanwhile."""
        delay = self.settings.publish_retry_initial_s
        while not stop.is_set():
            try:
                return action()
            except Exception as error:
                if not _is_store_outage(error):
                    raise
                log.error("model store unavailable (%s); retrying in %.1f s", error, delay)
            if stop.wait(delay):
                break
            delay = min(2 * delay, self.settings.publish_retry_max_s)
        return None

    def _commit(self, records: list[LogRecord]) -> None:
        try:
            self.consumer.commit(records)
        except Exception as error:  # positions are in the checkpoint; a re-read is skipped
            log.error("committing log positions failed (%s); they will be re-read", error)

    def _log_block(self, meta: dict[str, Any], seconds: dict[str, float], version: int) -> None:
        metrics = meta["prequential"]
        quality = ", ".join(
            f"{name}={value:.4f}" for name, value in metrics.items() if name != "users"
        )
        log.info(
            "block %d: %d events (%d new users, %d new items; %d / %d in total) -> version %d; "
            "prequential %s (%d users); %s",
            meta["block_index"],
            meta["events"],
            meta["new_users"],
            meta["new_items"],
            meta["n_users"],
            meta["n_items"],
            version,
            quality or "n/a (first model)",
            int(metrics.get("users", 0)),
            " ".join(f"{stage} {s:.2f}s" for stage, s in seconds.items()),
        )

    def close(self) -> None:
        self.consumer.close()
        self.store.close()


def parse_record(record: LogRecord) -> tuple[InteractionEvent, list[str]]:
    """The event a raw message holds and the unknown (ignored) fields in it; raises (naming
    why) when it holds no event."""
    if record.value is None:
        raise ValueError("null value (a tombstone), not an event")
    return parse_event(orjson.loads(record.value))


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(user, item) index pairs (n,) each as one int64 key ``user << 32 | item`` (n,).

    Examples:
        >>> pair_keys(np.array([0, 1]), np.array([5, 2])).tolist()  # 1 << 32 | 2 = 4294967298
        [5, 4294967298]
    """
    return users.astype(np.int64) << _PAIR_SHIFT | items.astype(np.int64)


def contains_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(len(keys),) bool: which ``keys`` are in ``sorted_keys``, by binary search (no sort of
    the ever-growing seen pairs per block).

    Examples:
        >>> contains_sorted(np.array([2, 5, 9]), np.array([5, 6, 9]))
        array([ True, False,  True])
    """
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    positions = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(positions, len(sorted_keys) - 1)] == keys


def insert_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Sorted unique ``sorted_keys`` with the sorted unique ``keys`` merged in: one copy.

    Examples:
        >>> insert_sorted(np.array([2, 5, 9]), np.array([1, 5, 7]))
        array([1, 2, 5, 7, 9])
    """
    new = keys[~contains_sorted(sorted_keys, keys)]
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new), new)


def rows_of_users(pairs: np.ndarray, users: np.ndarray) -> np.ndarray:
    """The pair keys of ``users`` (sorted, unique) in sorted ``pairs`` (user << 32 | item):
    one contiguous run per user, found by binary search, without a pass over all pairs.

    Examples:
        >>> pairs = pair_keys(np.array([0, 1, 1]), np.array([5, 2, 7]))  # sorted keys
        >>> keys = rows_of_users(pairs, np.array([1]))
        >>> (keys >> 32).tolist(), (keys & 0xFFFFFFFF).tolist()  # user 1's two pairs
        ([1, 1], [2, 7])
    """
    starts = np.searchsorted(pairs, users << _PAIR_SHIFT)
    lengths = np.searchsorted(pairs, (users + 1) << _PAIR_SHIFT) - starts
    run_offsets = np.cumsum(lengths) - lengths  # where each run starts in the output
    return pairs[np.repeat(starts - run_offsets, lengths) + np.arange(lengths.sum())]


def _id_map(stored: bytes | list[str]) -> IdMap:
    """The id map of a checkpoint: JSON bytes (format 2) or a list (format 1)."""
    return IdMap.from_json(stored) if isinstance(stored, bytes) else IdMap(stored)


def _pairs_to_interactions(keys: np.ndarray, weights: np.ndarray | None = None) -> Interactions:
    return Interactions(
        torch.from_numpy(keys >> _PAIR_SHIFT),
        torch.from_numpy(keys & ((1 << _PAIR_SHIFT) - 1)),
        None if weights is None else torch.from_numpy(weights),
    )


def _is_store_outage(error: Exception) -> bool:
    """A transient store failure worth retrying: an I/O error, or a Redis connection/timeout."""
    import redis

    return isinstance(error, (OSError, redis.ConnectionError, redis.TimeoutError))
