"""`tuneforge train CONFIG [key=value ...]`: run the config's stage.

Under torchrun each process runs this same command. With FORCE_TORCHRUN=1 (or several
GPUs), it relaunches itself through torchrun, reading NNODES, NODE_RANK, NPROC_PER_NODE,
MASTER_ADDR and MASTER_PORT as LLaMA-Factory users expect.
"""

from __future__ import annotations

import argparse

from tuneforge.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError

    if not args.config:
        raise ConfigError("usage: tuneforge train CONFIG.yaml [key=value ...]")
    from tuneforge.cli.launch import relaunch_needed, relaunch_with_torchrun

    if relaunch_needed():
        return relaunch_with_torchrun(["train", args.config, *args.overrides])
    from tuneforge.config.loader import load_config
    from tuneforge.stages import run_stage
    from tuneforge.utils.logs import setup_logging

    setup_logging()
    config = load_config(args.config, args.overrides)
    try:
        return run_stage(config)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Ends this process's part in a distributed run: a gloo group left to the interpreter's
    exit may abort the process ("terminate called without an active exception") after the
    run itself succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
