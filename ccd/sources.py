"""Which source of events a `ccd up` data directory was made from, so that two never mix.

A data directory holds one run's event log, model versions and trainer checkpoint. `ccd up`
records its source (a file's absolute path, or the synthetic generator's sizes and seed) in
``source.json`` when it first uses the directory, and refuses a directory recorded for another
source: a MovieLens file streamed into a synthetic run's directory would otherwise be learned on
top of the synthetic model (unknown MovieLens users would get synthetic items). The same source
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SOURCE_FILE = "source.json"

Source = dict[str, Any]


def file_source(path: Path) -> Source:
    return {"kind": "file", "path": str(path.resolve())}


def synthetic_source(users: int, items: int, seed: int) -> Source:
    """The arguments that decide which users and items exist and what they like (the rate only
    spaces the timestamps, so it may change between runs)."""
    return {"kind": "synthetic", "users": users, "items": items, "seed": seed}


def describe(source: Source) -> str:
    if source.get("kind") == "file":
        return f"file {source.get('path')}"
    if source.get("kind") == "synthetic":
        sizes = f"users {source.get('users')}, items {source.get('items')}"
        return f"synthetic events ({sizes}, seed {source.get('seed')})"
    return f"an unknown source {source}"


def claim(data_dir: Path, source: Source) -> str | None:
    """Records ``source`` as ``data_dir``'s (creating the directory) and returns None, or returns
    the one line saying why the directory belongs to another source and how to start fresh."""
    record = data_dir / SOURCE_FILE
    fresh = f"to start fresh, remove it (rm -r {data_dir}) or pick another --data-dir"
    try:
        if record.exists():
            recorded = _read(record)
            if recorded == source:
                return None
            made_from = describe(recorded) if recorded is not None else f"an unreadable {record}"
            return f"{data_dir} holds a run of {made_from}, not of {describe(source)}; {fresh}"
        if data_dir.is_dir() and any(data_dir.iterdir()):
            # Made before sources were recorded, or by `ccd train` / `ccd produce`: unknown.
            return f"{data_dir} holds data of an unrecorded source (no {SOURCE_FILE}); {fresh}"
        data_dir.mkdir(parents=True, exist_ok=True)
        _write(record, source)
    except OSError as error:
        return f"{data_dir}: {error.strerror or error}"
    return None


def _read(record: Path) -> Source | None:
    try:
        recorded = json.loads(record.read_text())
    except ValueError:
        return None
    return recorded if isinstance(recorded, dict) else None


def _write(record: Path, source: Source) -> None:
    """Atomically: a crash mid-write must not leave a record that refuses its own source."""
    partial = record.with_suffix(".tmp")
    partial.write_text(json.dumps(source, indent=1) + "\n")
    os.replace(partial, record)
