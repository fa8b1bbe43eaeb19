"""Scale: one `ccd serve` replica with a 10M-user / 1M-item / d=16 model on this machine, and
exact versus approximate (ANN) top-k at 1M items.

    ccd bench scale                                  # 1M then 10M users, 1M items, d=16
    ccd bench scale --users 1000000 --items 200000   # smaller
    ccd bench scale --redis-url redis://127.0.0.1:6379/0   # also through Redis (keys removed)

No training at this size: the embeddings are generated directly (items around 256 cluster
centres with log-normal norms, users around the same centres; ``synthetic_items``), so the
numbers are about moving and serving tables, not about model quality. Steps, in one run:

1. A `ccd serve` process starts on an empty model store; its RSS before any data is read.
2. For each user count (ascending), a version is published through the real model store
   (``contracts.model_store``, files under a temporary data dir): publish seconds and bytes;
   then the time until that server serves it (load, checks, id maps, and the ANN index build
   when the catalogue reaches ``CCD_ANN_MIN_ITEMS``) and its RSS; then HTTP latency against it.
   With ``--redis-url``, steps 1-2 again with a second server on the Redis store.
3. In this process, with the same item table and a sample of users: per-request ranking latency
   (p50/p99) exact vs ANN, and ANN recall@k against the exact answer.
4. User-row churn (``row_churn``): the real trainer per learner on a small synthetic stream,
   and how much of each version's user table a delta version would have to carry.

Each figure sits beside the single-machine figure it replaces (read from this folder's other
results where one exists). Memory: the 10M-user step holds ~3 GB in this process and ~3-4 GB in
the server at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Target,
    add_output_args,
    add_target,
    child_env,
    free_port,
    markdown_table,
    new_result,
    percentiles,
    running,
    spawn,
    text_table,
    wait_http,
)
from bench.report import save_result
from contracts.model_store import FileModelStore, ModelSnapshot, RedisModelStore
from service.ann import build_item_index
from service.ranking import RankOptions, ServingModel, limit_blas_threads

TITLE = "Scale: a 10M-user / 1M-item model on one replica, exact vs ANN top-k"
_CENTRES = 256
RECALL_TARGET = 0.95
RSS_TARGET_MIB = 150.0


def synthetic_items(n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(item table (I, d) float32, cluster centres (256, d)): items around random centres with
    log-normal norms, as factor models' tables look (popular items have longer vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((_CENTRES, dim)).astype(np.float32)
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 1_000_000):  # bounded temporaries
        part = slice(start, min(n_items, start + 1_000_000))
        size = part.stop - part.start
        rows = centres[rng.integers(0, _CENTRES, size)] * 0.7
        rows += rng.standard_normal((size, dim), dtype=np.float32) * 0.7
        rows *= rng.lognormal(0.0, 0.3, (size, 1)).astype(np.float32)
        items[part] = rows
    return items, centres


def synthetic_users(n_users: int, centres: np.ndarray, seed: int) -> np.ndarray:
    """(U, d) float32 user table around the item centres, filled 1M rows at a time."""
    rng = np.random.default_rng(seed + 1)
    users = np.empty((n_users, centres.shape[1]), dtype=np.float32)
    for start in range(0, n_users, 1_000_000):
        part = slice(start, min(n_users, start + 1_000_000))
        size = part.stop - part.start
        users[part] = centres[rng.integers(0, _CENTRES, size)] * 0.7
        users[part] += rng.standard_normal((size, centres.shape[1]), dtype=np.float32) * 0.7
    return users


def snapshot_of(users: np.ndarray, items: np.ndarray) -> ModelSnapshot:
    """A version with ids ``u0..`` and ``i0..`` (what a store publishes)."""
    return ModelSnapshot(
        user_ids=[f"u{u}" for u in range(users.shape[0])],
        item_ids=[f"i{i}" for i in range(items.shape[0])],
        user_embeddings=users,
        item_embeddings=items,
        item_popularity=np.zeros(items.shape[0], dtype=np.float32),
    )


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def publish_step(
    store: Any, users: np.ndarray, items: np.ndarray, base: str, server: Any
) -> dict[str, Any]:
    """Publish one version, wait until the server serves it; seconds, bytes, server RSS."""
    snapshot = snapshot_of(users, items)
    started = time.perf_counter()
    version = store.publish(snapshot)
    published = time.perf_counter()
    del snapshot
    gc.collect()
    wait_http(
        f"{base}/health/ready", 1800, server, ok=lambda body: body.get("model_version") == version
    )
    served = time.perf_counter()
    size = int(store.load_meta(version)["size_bytes"])
    rss, peak = rss_mib(server.process.pid)
    return {
        "users": int(users.shape[0]),
        "version": version,
        "publish_s": published - started,
        "publish_bytes": size,
        "bytes_per_user": size / users.shape[0],
        "publish_to_served_s": served - published,
        "server_rss_mib": rss,
        "server_peak_rss_mib": peak,
    }


def load_breakdown(
    items: np.ndarray, centres: np.ndarray, n_users: int, seed: int
) -> dict[str, float]:
    """Where a version's publish and load time goes, in this process, at ``n_users``: the
    store's encoding (ids to arrays, .npz, SHA-256), its decoding (checksum, np.load, ids to
    lists), the serving form without an index (id dicts, item table prep) and the ANN index."""
    from contracts.model_store import decode_snapshot, encode_snapshot

    snapshot = snapshot_of(synthetic_users(n_users, centres, seed), items)
    seconds = {}
    started = time.perf_counter()
    blob, meta = encode_snapshot(snapshot)
    seconds["encode_s"] = time.perf_counter() - started
    del snapshot
    gc.collect()
    started = time.perf_counter()
    decoded = decode_snapshot(blob, meta)
    seconds["decode_s"] = time.perf_counter() - started
    del blob
    gc.collect()
    started = time.perf_counter()
    model = ServingModel.from_snapshot(decoded)
    seconds["serving_form_s"] = time.perf_counter() - started
    started = time.perf_counter()
    build_item_index(model.item_matrix, 1)
    seconds["ann_index_s"] = time.perf_counter() - started
    return {"users": n_users, **seconds}


def ranking_latency(
    items: np.ndarray, centres: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Exact vs ANN ranking of one request each, interleaved, in this process (one BLAS
    thread, as a server); recall@k of ANN against exact; with all items and 10 % eligible."""
    users = synthetic_users(args.requests, centres, args.seed + 7)
    exact = ServingModel.from_snapshot(snapshot_of(users, items))
    started = time.perf_counter()
    index = build_item_index(exact.item_matrix, 1)
    build_s = time.perf_counter() - started
    assert index is not None, "faiss is not installed"
    approximate = dataclasses.replace(exact, ann=index)
    eligible = np.random.default_rng(args.seed).random(items.shape[0]) < 0.1
    conditions = {"all items": RankOptions(), "10 % eligible": RankOptions(eligible)}
    out: dict[str, Any] = {"index_build_s": build_s, "lists": index.index.nlist}
    out["probe"] = index.probe
    for name, options in conditions.items():
        times: dict[str, list[float]] = {"exact": [], "ann": []}
        recalls = []
        for row in range(args.requests):
            answers = {}
            for label, model in (("exact", exact), ("ann", approximate)):
                began = time.perf_counter()
                answers[label] = model.recommend(f"u{row}", args.k, options=options).item_ids
                times[label].append((time.perf_counter() - began) * 1e3)
            recalls.append(len(set(answers["ann"]) & set(answers["exact"])) / args.k)
        out[name] = {
            "exact_ms": percentiles(times["exact"], (50, 99)),
            "ann_ms": percentiles(times["ann"], (50, 99)),
            "recall_at_k": float(np.mean(recalls)),
            "requests": args.requests,
        }
    return out


CHURN_LEARNERS = (("ccd", "best"), ("bpr", "best"), ("als", "best"))


def row_churn(args: argparse.Namespace) -> dict[str, Any]:
    """For each learner: the real trainer (embedded log and store) over a synthetic stream,
    then, between consecutive published versions, the share of the previous version's user
    rows whose vector changed at all, and the bytes of a delta version (changed and new user
    rows, the item table whole) beside the whole version's. Decides whether user-row deltas
    would make publishing cheaper."""
    from contracts.event_log import SqliteEventLog
    from contracts.model_store import encode_snapshot
    from contracts.settings import Settings
    from trainer.process import run_trainer
    from trainer.synthetic import SyntheticStream

    out: dict[str, Any] = {}
    for learner, variant in CHURN_LEARNERS:
        with tempfile.TemporaryDirectory(prefix="ccd-bench-scale-churn-") as folder:
            settings = Settings(
                data_dir=Path(folder), learner=learner, learner_variant=variant,
                base_block_size=args.churn_base_events, block_size=args.churn_block_events,
                block_interval_s=3600.0, min_block_size=10, torch_threads=1, seed=args.seed,
            )  # fmt: skip
            events = args.churn_base_events + args.churn_blocks * args.churn_block_events
            stream = SyntheticStream(
                n_users=args.churn_users, n_items=args.churn_items, seed=args.seed,
                n_events=events,
            )  # fmt: skip
            log = SqliteEventLog(settings.event_log_path)
            log.append(list(stream))
            log.close()
            run_trainer(settings, max_blocks=args.churn_blocks + 1)
            store = FileModelStore(settings.model_store_dir, keep_versions=10**6)
            versions = [store.load(v) for v in sorted(store.versions())]
        pairs = []
        for before, after in zip(versions, versions[1:], strict=False):
            index = {user: row for row, user in enumerate(after.user_ids)}
            rows = np.array([index[user] for user in before.user_ids])
            shift = after.user_embeddings[rows] - before.user_embeddings
            changed = np.any(shift != 0, axis=1)
            norms = np.linalg.norm(before.user_embeddings, axis=1)
            moved_1pct = np.linalg.norm(shift, axis=1) > 0.01 * norms
            moved = np.concatenate([rows[changed], np.arange(len(before.user_ids), len(index))])
            delta = dataclasses.replace(
                after,
                user_ids=[after.user_ids[row] for row in moved.tolist()],
                user_embeddings=after.user_embeddings[moved],
            )
            pairs.append(
                {
                    "users_before": len(before.user_ids),
                    "changed_share": float(changed.mean()),
                    "moved_over_1pct_share": float(moved_1pct.mean()),
                    "new_users": len(index) - len(before.user_ids),
                    "whole_bytes": len(encode_snapshot(after)[0]),
                    "delta_bytes": len(encode_snapshot(delta)[0]),
                }
            )
        out[f"{learner} ({variant})"] = pairs
        print(f"churn {learner}: {[round(p['changed_share'], 3) for p in pairs]}", flush=True)
    return out


def http_latency(base: str, n_users: int, requests: int, k: int) -> dict[str, Any]:
    """GET /recommendations/{user}?k= one at a time against the server; ms percentiles."""
    import httpx

    rng = np.random.default_rng(3)
    times = []
    with httpx.Client(timeout=30.0) as client:
        for user in rng.integers(0, n_users, requests):
            began = time.perf_counter()
            response = client.get(f"{base}/recommendations/u{user}", params={"k": k})
            times.append((time.perf_counter() - began) * 1e3)
            response.raise_for_status()
    return {"requests": requests, "latency_ms": percentiles(times, (50, 99))}


def single_machine(out_dir: Path) -> dict[str, Any]:
    """The figures this run replaces, from the other results in ``out_dir`` (None if absent)
    and issue 15's measurements of the server before it was made lean."""

    def read(name: str, *path: str) -> Any:
        try:
            value: Any = json.loads((out_dir / f"{name}.json").read_text())
            for key in path:
                value = value[key]
            return value
        except (OSError, KeyError, IndexError, TypeError, ValueError):
            return None

    ranking = ("results", "ranking", "unfiltered", "latency_ms")
    return {
        "rss_before_data_mib": 577.0,  # issue 15: importing torch in the server
        "ready_s": "2.0 + 3.3 per million events (issue 15: seen-items replay)",
        "publish_s": read("freshness", "results", "publish", "publish_s", "p50"),
        "publish_users": read("freshness", "results", "publish", "catalogue", "users"),
        "ranking_p50_ms": read("filters", *ranking, "p50"),
        "ranking_p99_ms": read("filters", *ranking, "p99"),
        "ranking_items": read("filters", "results", "sizes", "items"),
    }


def serve_and_publish(
    redis_url: str | None, args: argparse.Namespace, items: np.ndarray, centres: np.ndarray
) -> dict[str, Any]:
    """One `ccd serve` on an empty store (files, or Redis at ``redis_url``): its RSS before
    data, then one published version per user count (``publish_step``), then HTTP latency;
    what this run put in the store is removed at the end."""
    out: dict[str, Any] = {"store": "redis" if redis_url else "files"}
    work = Path(tempfile.mkdtemp(prefix="ccd-bench-scale-"))
    prefix = f"ccd-bench-scale-{int(time.time())}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"CCD_DATA_DIR": str(work), "CCD_RELOAD_POLL_S": "0.2", "CCD_LOG_LEVEL": "WARNING"}
    env["CCD_ANN_MIN_ITEMS"] = str(args.ann_min_items)
    if redis_url:
        env.update(CCD_REDIS_URL=redis_url, CCD_REDIS_PREFIX=prefix)
    command = [sys.executable, "-m", "ccd.cli", "serve", "--port", str(port)]
    store = RedisModelStore(redis_url, prefix) if redis_url else FileModelStore(work / "models")
    try:
        server = spawn("server", command, work / "server.log", child_env(**env))
        with running(server):
            started = time.perf_counter()
            wait_http(f"{base}/health/live", 120, server)
            out["server_live_s"] = time.perf_counter() - started
            time.sleep(1.0)  # let start-up allocations settle
            out["server_rss_before_data_mib"] = rss_mib(server.process.pid)[0]
            steps = []
            for n_users in sorted(args.users):
                users = synthetic_users(n_users, centres, args.seed)
                steps.append(publish_step(store, users, items, base, server))
                print(out["store"], json.dumps(steps[-1]), flush=True)
                del users
                gc.collect()
            out["publish"] = steps
            if redis_url:
                out["redis_store_mib"] = _redis_mib(store, prefix)
            out["http_ann"] = http_latency(base, max(args.users), args.http_requests, args.k)
    finally:
        if redis_url:
            _drop_redis(store, prefix)
        shutil.rmtree(work, ignore_errors=True)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit_blas_threads(1)
    params = {k: v for k, v in vars(args).items() if k not in ("out", "redis_url")}
    params["store"] = "files and redis" if args.redis_url else "files"
    result = new_result("scale", TITLE, params)
    results = result["results"]
    results["single_machine"] = single_machine(args.out)
    results["server_ann_min_items"] = args.ann_min_items
    items, centres = synthetic_items(args.items, args.dim, args.seed)
    results.update(serve_and_publish(None, args, items, centres))
    if args.redis_url:
        results["redis"] = serve_and_publish(args.redis_url, args, items, centres)
    results["load_breakdown"] = load_breakdown(items, centres, max(args.users), args.seed)
    results["ranking"] = ranking_latency(items, centres, args)
    if args.churn_blocks > 0:
        results["churn"] = row_churn(args)
    _targets(result)
    result["notes"] += _notes(result)
    return result


def _notes(result: dict[str, Any]) -> list[str]:
    """What a reader needs to read the tables right."""
    results = result["results"]
    build = results["ranking"]["index_build_s"]
    return (
        [
            "Synthetic tables, no training: items around 256 random centres with log-normal "
            "norms, users around the same centres. Recall depends on the tables; it was not "
            "measured on a trained model's tables at this size.",
            f"Publish to served includes the server's ANN index build (the same build took "
            f"{build:.1f} s in this process) and, for the larger version, dropping the previous "
            "one; the server keeps serving the previous version meanwhile.",
            "Every version carries the whole user table (publish bytes grow with users); the "
            "single-machine publish figure is the Gowalla-sized student through the file store.",
            "The server's peak RSS while swapping holds the old and the new version at once.",
        ]
        + _redis_notes(results)
        + _churn_notes(results)
    )


def _redis_notes(results: dict[str, Any]) -> list[str]:
    """How the Redis store's server differs from the file store's, when both ran."""
    redis = results.get("redis")
    if not redis:
        return []
    files_rss, redis_rss = results["publish"][-1], redis["publish"][-1]
    return [
        f"Through Redis the server held {redis_rss['server_rss_mib']:,.0f} MiB after loading "
        f"the {redis_rss['users']:,}-user version against {files_rss['server_rss_mib']:,.0f} "
        "MiB through files: RedisModelStore.load keeps the blob's chunks and their join at once "
        "(twice the blob); why more of it stays resident afterwards was not investigated."
    ]


def _churn_notes(results: dict[str, Any]) -> list[str]:
    """The publish-format decision the churn measurement supports."""
    churn = results.get("churn")
    if not churn:
        return []
    least = min(pair["changed_share"] for pairs in churn.values() for pair in pairs)
    return [
        f"User-row deltas: every learner changed at least {least:.0%} of the user rows between "
        "consecutive versions (CCD's Stage 1 distils a fresh student each block; bpr's Adam "
        "with weight decay moves every row at every step; iALS refits every user), so a delta "
        "version would weigh what a whole one does: versions stay whole. Deltas pay off only "
        "once a learner updates just the rows a block touches (a sparse optimiser without "
        "global decay), a change to models/ not made here."
    ]


def _redis_mib(store: Any, prefix: str) -> float:
    """Redis memory of this run's keys (every kept version), MiB, by MEMORY USAGE."""
    client = store._redis
    keys = list(client.scan_iter(f"{prefix}:*"))
    return sum(int(client.memory_usage(key) or 0) for key in keys) / 2**20


def _drop_redis(store: Any, prefix: str) -> None:
    """Remove what this run put in Redis (files go with the temporary folder)."""
    client = store._redis
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    store.close()


def _targets(result: dict[str, Any]) -> None:
    results = result["results"]
    recall = results["ranking"]["all items"]["recall_at_k"]
    n_items = result["params"]["items"]
    add_target(
        result,
        Target(
            f"ANN recall@{result['params']['k']} vs exact ({n_items:,} items)",
            f">= {RECALL_TARGET}",
            recall,
            "",
            recall >= RECALL_TARGET,
        ),
    )
    rss = results["server_rss_before_data_mib"]
    add_target(
        result,
        Target("server RSS before data", f"<= {RSS_TARGET_MIB:.0f} MB", rss, "MiB", rss <= 150),
    )
    largest = results["publish"][-1]
    add_target(
        result,
        Target(
            f"server RSS serving {largest['users']:,} users x {n_items:,} items",
            "measured",
            largest["server_rss_mib"],
            "MiB",
            None,
        ),
    )


PUBLISH_HEADERS = [
    "users",
    "publish s",
    "MB per version",
    "bytes per user",
    "publish to served s",
    "server RSS MiB",
    "server peak RSS MiB",
]
LATENCY_HEADERS = ["condition", "exact p50 ms", "exact p99 ms", "ANN p50 ms", "ANN p99 ms"]
LATENCY_HEADERS += ["p50 speed-up", "recall@k"]


def publish_rows(results: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            step["users"],
            step["publish_s"],
            step["publish_bytes"] / 1e6,
            step["bytes_per_user"],
            step["publish_to_served_s"],
            step["server_rss_mib"],
            step["server_peak_rss_mib"],
        ]
        for step in results["publish"]
    ]


def latency_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name in ("all items", "10 % eligible"):
        part = results["ranking"][name]
        exact, ann = part["exact_ms"], part["ann_ms"]
        speed = exact["p50"] / ann["p50"] if ann["p50"] else None
        rows.append([name, exact["p50"], exact["p99"], ann["p50"], ann["p99"], speed])
        rows[-1].append(part["recall_at_k"])
    return rows


def beside_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Each figure of this run beside the single-machine figure it replaces."""
    results, params = result["results"], result["params"]
    old = results["single_machine"]
    largest = results["publish"][-1]
    ranking = results["ranking"]["all items"]
    old_items = old.get("ranking_items")
    on = f" ({old_items:,} items)" if old_items else ""
    old_users = old.get("publish_users")
    published = f" ({old_users:,} users)" if old_users else ""
    return [
        ["server RSS before data, MiB", results["server_rss_before_data_mib"],
         old["rss_before_data_mib"], "issue 15 (torch imported)"],
        [f"server RSS serving {largest['users']:,} users, MiB", largest["server_rss_mib"],
         None, "not measured at this size before"],
        [f"time to ready after publish ({largest['users']:,} users), s",
         largest["publish_to_served_s"], old["ready_s"], "log replay + load"],
        [f"publish s per version ({largest['users']:,} users)", largest["publish_s"],
         old.get("publish_s"), f"freshness{published}"],
        [f"ranking p50 ms, ANN ({params['items']:,} items)", ranking["ann_ms"]["p50"],
         old.get("ranking_p50_ms"), f"filters, exact{on}"],
        [f"ranking p99 ms, ANN ({params['items']:,} items)", ranking["ann_ms"]["p99"],
         old.get("ranking_p99_ms"), f"filters, exact{on}"],
    ]  # fmt: skip


BESIDE_HEADERS = ["figure", "this run", "single machine before", "source of the old figure"]


def render(result: dict[str, Any]) -> str:
    results, params = result["results"], result["params"]
    ranking = results["ranking"]
    http = results["http_ann"]["latency_ms"]
    parts = [
        f"Synthetic tables (no training): {params['items']:,} items, d={params['dim']}, users "
        f"{', '.join(f'{u:,}' for u in sorted(params['users']))}; model store: "
        f"{params['store']}. One `ccd serve` replica per store; RSS before data "
        f"{results['server_rss_before_data_mib']:.0f} MiB.\n",
        "Publish through the file model store, then until the server serves the version (load, "
        "checks, id maps, ANN index):\n",
        markdown_table(PUBLISH_HEADERS, publish_rows(results)),
        *_redis_parts(results),
        *_breakdown_parts(results),
        f"\nRanking one request in process, exact scan vs ANN (faiss IVF, {ranking['lists']} "
        f"lists, {ranking['probe']} probed; index built in {ranking['index_build_s']:.1f} s), "
        f"{ranking['all items']['requests']} users, k={params['k']}, interleaved:\n",
        markdown_table(LATENCY_HEADERS, latency_rows(results)),
        f"\nHTTP, one request at a time to the file-store server (ANN): p50 "
        f"{http['p50']:.2f} ms, p99 {http['p99']:.2f} ms over "
        f"{results['http_ann']['requests']} requests.\n",
        "Beside the single-machine figures they replace:\n",
        markdown_table(BESIDE_HEADERS, beside_rows(result)),
    ]
    if results.get("churn"):
        parts += [
            "\nUser rows changed between consecutive versions of the real trainer (synthetic "
            f"stream, {params['churn_users']:,} users, {params['churn_items']:,} items, "
            f"{params['churn_block_events']:,}-event blocks), and what a delta version (changed "
            "and new user rows, items whole) would weigh against the whole version:\n",
            markdown_table(CHURN_HEADERS, churn_rows(results)),
        ]
        projected = delta_projection(results)
        if projected:
            parts.append("\n" + projected)
    return "\n".join(parts)


def _breakdown_parts(results: dict[str, Any]) -> list[str]:
    """One line: where the publish and load seconds go (absent from older results)."""
    parts = results.get("load_breakdown")
    if not parts:
        return []
    return [
        f"\nWhere the time goes at {parts['users']:,} users, in one process: encoding for the "
        f"store {parts['encode_s']:.1f} s, decoding (checksum, np.load, id lists) "
        f"{parts['decode_s']:.1f} s, the serving form (id dicts, item table) "
        f"{parts['serving_form_s']:.1f} s, the ANN index {parts['ann_index_s']:.1f} s.\n"
    ]


def _redis_parts(results: dict[str, Any]) -> list[str]:
    """The same publishes through Redis (a second server), when the run had a Redis URL."""
    redis = results.get("redis")
    if not redis:
        return []
    http = redis["http_ann"]["latency_ms"]
    return [
        f"\nThe same through the Redis model store (another `ccd serve`, RSS before data "
        f"{redis['server_rss_before_data_mib']:.0f} MiB; the store's keys for both versions "
        f"{redis['redis_store_mib']:,.0f} MiB of Redis memory; HTTP p50 {http['p50']:.2f} ms, "
        f"p99 {http['p99']:.2f} ms):\n",
        markdown_table(PUBLISH_HEADERS, publish_rows(redis)),
    ]


CHURN_HEADERS = ["learner", "version step", "user rows changed", "moved > 1 % of norm"]
CHURN_HEADERS += ["new users", "delta / whole"]


def churn_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for learner, pairs in results["churn"].items():
        for step, pair in enumerate(pairs, start=1):
            share = pair["delta_bytes"] / pair["whole_bytes"]
            rows.append([learner, f"{step} -> {step + 1}", pair["changed_share"]])
            rows[-1] += [pair["moved_over_1pct_share"], pair["new_users"], share]
    return rows


def delta_projection(results: dict[str, Any]) -> str:
    """Bytes per user and of the item part from the two largest publishes (a linear fit), and
    what a delta at 10M users would weigh at each learner's least churn measured."""
    steps = results["publish"]
    if len(steps) < 2:
        return ""
    small, large = steps[-2], steps[-1]
    per_user = (large["publish_bytes"] - small["publish_bytes"]) / (large["users"] - small["users"])
    fixed = small["publish_bytes"] - per_user * small["users"]
    lines = [
        f"From the publishes above: {per_user:.0f} bytes per user plus {fixed / 1e6:.0f} MB of "
        "items and ids per version. A delta at 10,000,000 users would weigh, at each "
        "learner's smallest measured share of changed rows:"
    ]
    for learner, pairs in results["churn"].items():
        share = min(pair["changed_share"] for pair in pairs)
        size = fixed + share * per_user * 10_000_000
        lines.append(f"{learner} {share:.0%} changed: {size / 1e6:,.0f} MB")
    return lines[0] + " " + "; ".join(lines[1:]) + "."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccd bench scale", description=__doc__)
    parser.add_argument(
        "--users", type=int, nargs="+", default=[1_000_000, 10_000_000],
        help="user counts, one published version each (ascending)",
    )  # fmt: skip
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300, help="ranking requests per side")
    parser.add_argument("--http-requests", type=int, default=300)
    parser.add_argument(
        "--ann-min-items", type=int, default=200_000, help="the server's CCD_ANN_MIN_ITEMS"
    )
    parser.add_argument("--redis-url", help="publish through Redis at this URL (default: files)")
    parser.add_argument("--seed", type=int, default=0)
    churn = parser.add_argument_group("user-row churn between versions (0 blocks: skip)")
    churn.add_argument("--churn-blocks", type=int, default=3)
    churn.add_argument("--churn-users", type=int, default=2000)
    churn.add_argument("--churn-items", type=int, default=1000)
    churn.add_argument("--churn-base-events", type=int, default=6000)
    churn.add_argument("--churn-block-events", type=int, default=1500)
    add_output_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print("\n" + text_table(PUBLISH_HEADERS, publish_rows(result["results"])))
    print("\n" + text_table(LATENCY_HEADERS, latency_rows(result["results"])))
    print("\n" + text_table(BESIDE_HEADERS, beside_rows(result)))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
