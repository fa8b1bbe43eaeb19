"""Where the trainer's learner runs: ``CCD_DEVICE=auto|cpu|cuda`` resolved against the machine.

CPU is the default. ``auto`` takes CUDA when torch sees a GPU; ``cuda`` without one is refused at
start-up with a line naming the variable (never a silent fall-back to the CPU). Nothing here
imports torch: the caller passes what ``torch.cuda.is_available()`` said.
"""

from __future__ import annotations


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used on this machine (the message names the fix)."""


def resolve_device(requested: str, cuda_available: bool) -> str:
    """The device a learner gets for ``requested`` (``auto``, ``cpu`` or ``cuda``).

    Examples:
        >>> resolve_device("auto", cuda_available=False)
        'cpu'
        >>> resolve_device("auto", cuda_available=True)
        'cuda'
        >>> resolve_device("cuda", cuda_available=False)
        Traceback (most recent call last):
        ...
        trainer.device.DeviceUnavailable: CCD_DEVICE=cuda but torch sees no CUDA GPU ...
    """
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise DeviceUnavailable(
            "CCD_DEVICE=cuda but torch sees no CUDA GPU (no device, no driver, or a CPU-only "
            "torch build): set CCD_DEVICE=cpu or auto"
        )
    if requested not in ("cpu", "cuda"):
        raise DeviceUnavailable(f"CCD_DEVICE={requested!r}: expected auto, cpu or cuda")
    return requested


def learner_device(device: str, accepts_device: bool, learner: str) -> str | None:
    """The ``device`` argument to build ``learner`` with: None when it takes none and runs on
    the CPU anyway; refuses ``cuda`` for a learner that cannot run there.

    Examples:
        >>> learner_device("cpu", accepts_device=False, learner="bpr") is None
        True
        >>> learner_device("cuda", accepts_device=True, learner="ccd")
        'cuda'
    """
    if accepts_device:
        return device
    if device != "cpu":
        raise DeviceUnavailable(
            f"learner {learner!r} cannot run on {device} (it takes no device argument): set "
            "CCD_DEVICE=cpu"
        )
    return None
