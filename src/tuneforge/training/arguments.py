"""The training arguments a run actually uses: the config's, plus what tuneforge's batching
and devices require. Every adjustment is visible in resolved.yaml.

On a machine without an accelerator two things depend on the device rather than the config:
FSDP is refused (accelerate enables it for GPU kinds only, so the run would silently be plain
DDP), and a DeepSpeed run gets its deepspeed.comm started over gloo before the arguments
exist (`start_deepspeed_comm`): transformers builds a ZeRO-3 model inside
`deepspeed.zero.Init`, which reads the world size from deepspeed.comm, and on CPU nothing else
starts it (accelerate's MULTI_CPU starts torch.distributed only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError
from tuneforge.utils.devices import cpu_only_distributed, device_count

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")


def effective_training_arguments(config: Config) -> Any:
    """Seq2SeqTrainingArguments for `config`, adjusted for padding-free training."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    values = dict(config.training)
    if not values.get("output_dir"):
        raise ConfigError("`output_dir` is required: the folder where the run is saved.")
    cpu_only = device_count() == 0
    if cpu_only or values.get("use_cpu"):
        refuse_fsdp_on_cpu(values)
    if not torch.cuda.is_available():
        values["dataloader_pin_memory"] = False  # nothing to pin memory for
        for precision in ("bf16", "fp16"):
            if values.get(precision):
                logger.warning("No CUDA device: %s is off, training runs in float32.", precision)
                values[precision] = False
    values["use_cpu"] = values.get("use_cpu") or cpu_only_distributed()  # else no DDP on CPU
    # Our batches carry example boundaries and shifted targets the model must not drop.
    values["remove_unused_columns"] = False
    values["label_names"] = ["labels"]
    # Padding-free: every input token is an effective token, so "all" counts them exactly.
    values["include_num_input_tokens_seen"] = "all"
    if config.finetuning.disable_shuffling:
        values["train_sampling_strategy"] = "sequential"
    if config.finetuning.finetuning_type == "lora":
        values.setdefault("ddp_find_unused_parameters", False)
    if config.extras.tensorboard_dir:
        # transformers' TensorBoard callback reads its folder from this variable only
        os.environ["TENSORBOARD_LOGGING_DIR"] = config.extras.tensorboard_dir
    if values.get("deepspeed") and cpu_only:
        start_deepspeed_comm()  # before the arguments: they set up ZeRO-3 and the processes
    try:
        return Seq2SeqTrainingArguments(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training arguments in {config.source}: {error}") from None


def refuse_fsdp_on_cpu(values: Mapping[str, Any]) -> None:
    """FSDP needs GPUs: accelerate turns it on for GPU distributed types only, so on CPU
    `fsdp` and `fsdp_config` would be dropped without a word and the run would be plain DDP
    with every weight on every process.

    Raises:
        ConfigError: naming the key, why it cannot apply, and what to use instead.
    """
    for name in ("fsdp", "fsdp_config"):
        if values.get(name):
            raise ConfigError(
                f"`{name}: {values[name]}`: FSDP shards a model across GPUs, and this run trains "
                "on CPU (no GPU visible, or `use_cpu`), where accelerate does not apply FSDP: the "
                "run would be plain DDP with the whole model on every process. Remove `fsdp` and "
                "`fsdp_config` to train with DDP, or shard on CPU with DeepSpeed ZeRO "
                "(`deepspeed: examples/deepspeed/ds_z3_config.json`)."
            )


# what torchrun (and the deepspeed launcher) set in every process; deepspeed.comm needs them all
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# an MPI launch's process count (Open MPI, MPICH / Intel MPI, MVAPICH), as accelerate reads it
MPI_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def start_deepspeed_comm() -> None:
    """Starts deepspeed.comm over gloo, once per process, for DeepSpeed on a CPU-only machine.

    Under a launcher it joins the launch's processes; without one it first sets up a world of
    this process alone (`one_process_world`). A second call does nothing, and a call after
    torch.distributed started only wraps the group that exists.
    """
    import deepspeed
    import deepspeed.comm as ds_comm

    if ds_comm.is_initialized():
        return
    os.environ.update(one_process_world(os.environ))
    # under mpirun, deepspeed.comm reads the ranks from MPI itself (with mpi4py)
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    world = ds_comm.get_world_size()
    logger.info("DeepSpeed on CPU: deepspeed.comm started over gloo (world size %d).", world)


def one_process_world(environ: Mapping[str, str]) -> dict[str, str]:
    """The launch variables to add so that deepspeed.comm can start: none under a launcher
    (torchrun, the deepspeed launcher, mpirun); without one, those `torchrun --nproc_per_node 1`
    would set (DeepSpeed's engine reads LOCAL_RANK, and without an address deepspeed.comm
    would look for MPI).

    Raises:
        ConfigError: a launch that sets only some of LAUNCH_VARIABLES.
    """
    if not any(name in environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        if any(name in environ for name in MPI_VARIABLES):
            return {}  # mpirun: deepspeed.comm finds the ranks through MPI
        return {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(_free_port()),
        }
    missing = [name for name in LAUNCH_VARIABLES if name not in environ]
    if missing:
        raise ConfigError(
            f"DeepSpeed on CPU: the launch sets some of {', '.join(LAUNCH_VARIABLES)} but not "
            f"{', '.join(missing)}; start it with torchrun (or FORCE_TORCHRUN=1 tuneforge train)."
        )
    return {}


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
