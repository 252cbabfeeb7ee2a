"""What this process runs on: accelerators visible, and whether a launch is CPU-only DDP.

torch is imported inside the functions, so that reading a flag costs nothing at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def env_enabled(name: str, environ: Mapping[str, str] | None = None, default: str = "0") -> bool:
    """True when the variable holds 1, true, y or yes (any case), as LLaMA-Factory reads flags."""
    environ = os.environ if environ is None else environ
    return environ.get(name, default).strip().lower() in ("1", "true", "y", "yes")


def device_count() -> int:
    """GPUs (or other accelerators) visible to this process; 0 on a CPU-only machine."""
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, NPU ...
    if accelerator is not None and accelerator.is_available():
        return accelerator.device_count()
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_only_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """True under a multi-process launch on a machine with no accelerator.

    DDP must then run on CPU with gloo, and transformers 5 (with accelerate 1.x) only does so
    with `use_cpu: true`: without it every process trains alone on the whole dataset.
    """
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE", "1")) > 1 and device_count() == 0
