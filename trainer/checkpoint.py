"""Trainer checkpoints: everything needed to resume after the last published block.

One file per block (``block-000003.pt``, or ``block-000003.e7.pt`` when written under writer
lease epoch 7), written through a temporary file, fsynced and renamed into place, so a crash
leaves either the old or the new checkpoint, never half of one. The newest is the one with the
highest (block, epoch): a trainer that lost its lease while paused and wrote one last checkpoint
late cannot hide the new holder's checkpoint of the same block.
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

# Format 2 stores the id maps as JSON bytes (format 1: lists of strings); both are read.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
_NAME = re.compile(r"block-(\d+)(?:\.e(\d+))?\.pt")


def checkpoint_path(directory: Path, block_index: int, epoch: int = 0) -> Path:
    suffix = f".e{epoch}" if epoch else ""
    return directory / f"block-{block_index:06d}{suffix}.pt"


def save_checkpoint(
    directory: Path, block_index: int, state: dict[str, Any], keep: int = 2, epoch: int = 0
) -> Path:
    """Atomically write ``state`` as the checkpoint after block ``block_index`` (by the writer
    of lease epoch ``epoch``); keeps the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, block_index, epoch)
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
    """Checkpoint files, oldest first: by block, then by lease epoch."""
    if not directory.exists():
        return []
    found = [p for p in directory.iterdir() if _NAME.fullmatch(p.name)]
    return sorted(found, key=_block_and_epoch)


def _block_and_epoch(path: Path) -> tuple[int, int]:
    match = _NAME.fullmatch(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


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
        if state.get("format") not in READABLE_FORMATS:
            log.warning("checkpoint %s has format %s; skipped", path, state.get("format"))
            continue
        log.info("restoring trainer checkpoint %s", path)
        return state
    return None
