"""Trainer checkpoints: everything needed to resume after the last published block.

One file per block (``block-000003.pt``), written through a temporary file, fsynced and renamed
into place, so a crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"block-(\d+)\.pt")


def checkpoint_path(directory: Path, block_index: int) -> Path:
    return directory / f"block-{block_index:06d}.pt"


def save_checkpoint(
    directory: Path, block_index: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """Atomically write ``state`` as the checkpoint after block ``block_index``; keeps the newest
    ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, block_index)
    temporary = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "wb") as file:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    for old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files, oldest block first."""
    if not directory.exists():
        return []
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def load_latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint (an unreadable newest one is skipped with a warning),
    or None when there is none."""
    for path in reversed(checkpoint_files(directory)):
        try:
            # weights_only: tensors, containers and primitives only; no arbitrary objects.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a torn or foreign file: fall back to the previous one
            log.warning("cannot read checkpoint %s (%s); trying an older one", path, error)
            continue
        if state.get("format") != CHECKPOINT_FORMAT:
            log.warning("checkpoint %s has format %s; skipped", path, state.get("format"))
            continue
        log.info("restoring trainer checkpoint %s", path)
        return state
    return None
