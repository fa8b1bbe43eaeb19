"""Where a learner's tensors live, and its random draws.

A learner takes ``device`` ("cpu" by default, or "cuda") and keeps everything a block update
touches there: the members' parameters, the block's interaction tensors (moved once, when
``learn_block`` starts), negatives, replay sets, losses and validation scores. The random draws
do not move: every ``torch.Generator`` is a CPU one, each draw is made on the CPU and the drawn
tensor is moved to the device (``randperm`` etc. below). So a seed gives the same draws on any
device, and the CPU path is unchanged. What crosses back to the CPU: ``state_dict()`` (CPU tensors,
so a checkpoint written on a GPU restores on a CPU machine and back), the served student
(``student()``, which the publisher writes as numpy), iALS fits (the ``implicit`` library's CPU
solver) and the few numpy kernels that are faster than torch on a CPU (they take the torch path
on another device).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

CPU = torch.device("cpu")


def randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``torch.randperm(n, generator=generator)`` drawn on the CPU, on ``device``."""
    return torch.randperm(n, generator=generator, device=CPU).to(device)


def randint(
    low: int,
    high: int,
    size: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """``torch.randint(low, high, size, generator=generator)`` drawn on the CPU, on ``device``."""
    return torch.randint(low, high, size, generator=generator, device=CPU).to(device)


def rand(
    size: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``torch.rand(size, generator=generator)`` drawn on the CPU, on ``device``."""
    return torch.rand(size, generator=generator, device=CPU, dtype=dtype).to(device)


def randn(
    size: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``torch.randn(size, generator=generator)`` drawn on the CPU, on ``device``."""
    return torch.randn(size, generator=generator, device=CPU, dtype=dtype).to(device)


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to ``device``; a dict
    keeps its type and a module state's ``_metadata``.

    >>> to_device({"a": [torch.ones(1)], "b": 2}, "cpu")
    {'a': [tensor([1.])], 'b': 2}
    """
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        out = type(value)((key, to_device(item, device)) for key, item in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(value, list | tuple):
        return type(value)(to_device(item, device) for item in value)
    return value
