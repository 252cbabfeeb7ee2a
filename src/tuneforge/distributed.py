"""Launching through torchrun, as LLaMA-Factory users expect (never a home-made launcher)."""

from __future__ import annotations

import os
import subprocess
import sys


def relaunch_needed() -> bool:
    """True when not already under torchrun and FORCE_TORCHRUN is set or several GPUs exist."""
    if "LOCAL_RANK" in os.environ:
        return False
    if os.environ.get("FORCE_TORCHRUN", "0").lower() in ("1", "true"):
        return True
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 1


def torchrun_command(arguments: list[str]) -> list[str]:
    """The torchrun command line for `tuneforge ARGUMENTS` from the launch variables."""
    import torch

    default_procs = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        os.environ.get("NNODES", "1"),
        "--node_rank",
        os.environ.get("NODE_RANK", "0"),
        "--nproc_per_node",
        os.environ.get("NPROC_PER_NODE", str(default_procs)),
        "--master_addr",
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "--master_port",
        os.environ.get("MASTER_PORT", "29500"),
        "-m",
        "tuneforge",
        *arguments,
    ]


def relaunch_with_torchrun(arguments: list[str]) -> int:
    return subprocess.run(torchrun_command(arguments), check=False).returncode
