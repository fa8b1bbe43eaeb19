"""Corrupt or truncated model versions in the store are refused and the last good one is kept.

- Generated: hypothesis damages a stored version's bytes (truncation, flipped bytes, appended
  garbage, an empty blob) and metadata, then makes it current in the real embedded store; the
  server's model holder must refuse it, keep serving version 1 and never raise. A variant also
  recomputes the checksum (a writer that stored garbage "correctly"): then the holder may only
  take the version if it passes every check, and otherwise keeps version 1.
- By hand on the real Redis: a truncated chunk, a missing chunk, unreadable metadata, NaN
  embeddings under a valid checksum and a pointer to a version that does not exist: the app
  stays ready on version 1 through all of them, then takes the next good version.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.model_store import FileModelStore, RedisModelStore, encode_snapshot
from contracts.settings import Settings
from service.app import create_app
from service.metrics import ServiceMetrics
from service.model_holder import ModelHolder
from tests.service.conftest import make_snapshot, wait_until

V2_USERS = [[0.1, 1.0], [0.2, 1.0]]
V1_U0 = ["i2", "i3", "i0", "i1", "i4"]
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@st.composite
def damaged(draw: st.DrawFn, blob: bytes, meta: dict[str, Any]) -> tuple[bytes, Any, bool]:
    """(blob, metadata, whether the checksum was made to match the damaged blob)."""
    data = bytearray(blob)
    kind = draw(st.sampled_from(["truncate", "flip", "append", "empty", "meta"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        positions = st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8, unique=True)
        for position in draw(positions):  # unique: two flips of one byte could cancel out
            data[position] ^= draw(st.integers(1, 255))
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "empty":
        data = bytearray()
    meta = dict(meta)
    if kind == "meta":
        meta = draw(
            st.sampled_from(
                [
                    {k: v for k, v in meta.items() if k != "sha256"},
                    {**meta, "dim": meta["dim"] + 1},
                    {**meta, "sha256": "0" * 64},
                    ["not", "a", "dict"],
                    "not json at all",
                ]
            )
        )
    matching = kind != "meta" and draw(st.booleans())
    if matching:
        meta["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    return bytes(data), meta, matching


def write_version(store: FileModelStore, version: int, blob: bytes, meta: Any) -> None:
    """A version directory written by hand, as a broken publisher would leave it."""
    directory = store.root / f"v{version:08d}"
    directory.mkdir()
    (directory / "model.npz").write_bytes(blob)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (directory / "meta.json").write_text(text)


def test_damaged_versions_are_refused_and_version_1_kept(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    store = FileModelStore(tmp_path / "models", keep_versions=1000)
    store.publish(make_snapshot())
    metrics = ServiceMetrics()
    holder = ModelHolder(store, metrics, poll_s=60.0)
    assert holder.refresh() and holder.model is not None and holder.model.version == 1
    good_blob, good_meta = encode_snapshot(make_snapshot(V2_USERS))
    outcome: Counter[str] = Counter()
    versions = iter(range(2, 10**6))

    @FUZZ
    @given(case=damaged(good_blob, good_meta))
    def damage(case: tuple[bytes, Any, bool]) -> None:
        blob, meta, matching = case
        version = next(versions)
        if isinstance(meta, dict):
            meta["version"] = version
        write_version(store, version, blob, meta)
        store.set_current(version)
        swapped = holder.refresh()  # must not raise, whatever the bytes
        model = holder.model
        assert model is not None
        if not matching:
            assert not swapped and model.version == 1
        if model.version == version:  # taken: only if it passed every check
            outcome["taken (valid despite the damage)"] += 1
            store.set_current(1)
            assert holder.refresh() and holder.model is not None and holder.model.version == 1
            assert np.isfinite(model.user_vectors).all()
            assert np.isfinite(model.item_matrix).all()
            assert model.user_vectors.shape[1] == model.item_matrix.shape[1]
            assert model.item_matrix.shape[0] == len(model.item_ids) == len(model.popularity)
        else:
            assert model.version == 1
            outcome["refused, checksum matching" if matching else "refused"] += 1
        shutil.rmtree(store.root / f"v{version:08d}")

    damage()
    samples = metrics.registry.get_sample_value
    figures.update(
        cases=outcome.total(),
        **outcome,
        refused_as_corrupt=samples("ccd_model_reload_failures_total", {"reason": "corrupt"}),
        refused_other_error=samples("ccd_model_reload_failures_total", {"reason": "store"}),
    )
    assert outcome["refused"] > 0


def npz_blob(users: np.ndarray) -> bytes:
    """An archive in the store's format whose user table is ``users`` (NaN allowed here)."""
    snapshot = make_snapshot()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        user_ids=np.asarray(snapshot.user_ids, dtype=np.str_),
        item_ids=np.asarray(snapshot.item_ids, dtype=np.str_),
        user_embeddings=users.astype(np.float32),
        item_embeddings=snapshot.item_embeddings,
        item_popularity=snapshot.item_popularity,
    )
    return buffer.getvalue()


@pytest.mark.integration
def test_corrupt_versions_in_redis_are_refused_and_the_app_stays_on_version_1(
    redis_url: str, unique_name: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    prefix = unique_name
    publisher = RedisModelStore(redis_url, prefix)
    raw = redis.Redis.from_url(redis_url)
    publisher.publish(make_snapshot())
    good_blob, good_meta = encode_snapshot(make_snapshot(V2_USERS))
    nan_blob = npz_blob(np.array([[np.nan, 1.0], [0.2, 1.0]]))
    half = len(good_blob) // 2
    broken = {
        "truncated chunk": ([good_blob[:half]], {**good_meta, "chunks": 1}),
        "missing chunk": ([good_blob[:half]], {**good_meta, "chunks": 2}),
        "unreadable metadata": ([good_blob], None),
        "NaN embeddings, valid checksum": (
            [nan_blob],
            {**good_meta, "sha256": hashlib.sha256(nan_blob).hexdigest(), "chunks": 1},
        ),
    }
    settings = Settings(
        kafka_bootstrap_servers=None,
        redis_url=redis_url,
        redis_prefix=prefix,
        data_dir=tmp_path,
        reload_poll_s=0.2,
    )
    try:
        with TestClient(create_app(settings)) as client:
            wait_until(lambda: client.get("/health/ready").status_code == 200, 30)

            def failures() -> float:
                text = client.get("/metrics").text
                return sum(
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("ccd_model_reload_failures_total{")
                )

            for version, (name, (chunks, meta)) in enumerate(broken.items(), start=100):
                for index, chunk in enumerate(chunks):
                    raw.set(f"{prefix}:model:{version}:chunk:{index}", chunk)
                text = "{not json" if meta is None else json.dumps({**meta, "version": version})
                raw.set(f"{prefix}:model:{version}:meta", text)
                before = failures()
                raw.set(f"{prefix}:current", version)
                raw.publish(f"{prefix}:updates", json.dumps({"event": "publish"}))
                wait_until(lambda before=before: failures() > before, 10)
                body = client.get("/recommendations/u0").json()
                assert body["model_version"] == 1, name
                assert [e["item_id"] for e in body["items"]] == V1_U0[: len(body["items"])]
                assert client.get("/health/ready").status_code == 200
            before = failures()
            raw.set(f"{prefix}:current", 999)  # a pointer to nothing
            wait_until(lambda: failures() > before, 10)
            assert client.get("/model").json()["version"] == 1
            refused = failures()
            # The next good publication is taken as usual.
            raw.set(f"{prefix}:current", 1)
            version = publisher.publish(make_snapshot(V2_USERS))
            wait_until(lambda: client.get("/model").json()["version"] == version, 10)
        figures.update(broken_versions=len(broken) + 1, refusals=refused, served_v1_through=True)
    finally:
        publisher.close()
        raw.close()
