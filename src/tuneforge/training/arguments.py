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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.config.loader import MEGATRON_UNSUPPORTED
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
    check_output_dir(str(values["output_dir"]))
    refuse_megatron(os.environ)
    check_installed(values)
    check_config_files(values)
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
    except (ValueError, TypeError, OverflowError) as error:
        raise ConfigError(f"training arguments in {config.source}: {error}") from None


def check_output_dir(output_dir: str) -> None:
    """Refuses an `output_dir` the run could not write, before anything loads or is written:
    a file, a path under a file, or a folder this user may not write to (the nearest folder
    that exists, when the output folder is still to be made). Creates nothing.

    Raises:
        ConfigError: naming the path that is in the way and what to do.
    """
    path = Path(output_dir).expanduser()
    try:
        path.exists()
    except OSError as error:  # a name too long for the file system, say
        raise ConfigError(
            f"`output_dir: {output_dir[:80]}{'...' if len(output_dir) > 80 else ''}` cannot be "
            f"a folder here: {error.strerror}. Choose another path."
        ) from None
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"`output_dir: {output_dir}` is a file, not a folder; the run saves its weights and "
            "checkpoints in a folder there. Choose another path, or move the file away."
        )
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"`output_dir: {output_dir}`: {existing} is a file, so no folder can be made under "
            "it. Choose another path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == path.absolute() else f" (to make {output_dir} in)"
        raise ConfigError(
            f"`output_dir: {output_dir}`: this user may not write to {existing}{made}. Choose a "
            "folder you can write to, or change its permissions."
        )


def check_config_files(values: Mapping[str, Any]) -> None:
    """`accelerator_config` and `fsdp_config` take a mapping or a JSON file's path, which
    transformers opens without a word of which key named it.

    Raises:
        ConfigError: naming the key and the missing file.
    """
    for name in ("accelerator_config", "fsdp_config"):
        value = values.get(name)
        if isinstance(value, str) and value and not _is_file(value):
            raise ConfigError(
                f"`{name}: {value}`: no such file. Give the path of a JSON file, or the "
                "settings as a mapping in the config."
            )


def _is_file(name: str) -> bool:
    try:
        return Path(name).expanduser().is_file()
    except OSError:  # a name too long for the file system, say
        return False


def refuse_megatron(environ: Mapping[str, str]) -> None:
    """USE_MCA=1 asks LLaMA-Factory for Megatron-Core training, which tuneforge does not do.

    Raises:
        ConfigError: saying so, and what to use instead.
    """
    if environ.get("USE_MCA", "").strip().lower() in ("1", "true", "yes", "y", "on"):
        raise ConfigError(f"USE_MCA={environ['USE_MCA']}: {MEGATRON_UNSUPPORTED}. Unset USE_MCA.")


# `report_to` integrations -> the packages to pip install for them (transformers decides
# whether each is available; kubeflow and flyte need more than a package and are left to it)
REPORTER_PACKAGES: dict[str, str] = {
    "azure_ml": "azureml-core",
    "clearml": "clearml",
    "codecarbon": "codecarbon",
    "comet_ml": "comet-ml",
    "dagshub": "dagshub mlflow",
    "dvclive": "dvclive",
    "mlflow": "mlflow",
    "neptune": "neptune",
    "swanlab": "swanlab",
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
}
_BITSANDBYTES = ("bitsandbytes", "'tuneforge[qlora]' (bitsandbytes)")
# transformers' `optim` names that need a package beyond torch -> (module, what to install)
OPTIMIZER_PACKAGES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            "adamw_bnb_8bit",
            "adamw_8bit",
            "ademamix",
            "ademamix_8bit",
            "lion_8bit",
            "lion_32bit",
            "paged_adamw_32bit",
            "paged_adamw_8bit",
            "paged_ademamix_32bit",
            "paged_ademamix_8bit",
            "paged_lion_32bit",
            "paged_lion_8bit",
            "rmsprop_bnb",
            "rmsprop_bnb_8bit",
            "rmsprop_bnb_32bit",
        ),
        _BITSANDBYTES,
    ),
    "adamw_torch_4bit": ("torchao", "torchao"),
    "adamw_torch_8bit": ("torchao", "torchao"),
    "adamw_torch_xla": ("torch_xla", "torch_xla (on TPUs)"),
    "adamw_torch_npu_fused": ("torch_npu", "torch_npu (on Ascend NPUs)"),
    "adamw_anyprecision": ("torchdistx", "torchdistx"),
    **dict.fromkeys(
        (
            "galore_adamw",
            "galore_adamw_8bit",
            "galore_adafactor",
            "galore_adamw_layerwise",
            "galore_adamw_8bit_layerwise",
            "galore_adafactor_layerwise",
        ),
        ("galore_torch", "galore-torch"),
    ),
    "apollo_adamw": ("apollo_torch", "apollo-torch"),
    "apollo_adamw_layerwise": ("apollo_torch", "apollo-torch"),
    "lomo": ("lomo_optim", "lomo-optim"),
    "adalomo": ("lomo_optim", "lomo-optim"),
    "grokadamw": ("grokadamw", "grokadamw"),
    "schedule_free_radam": ("schedulefree", "schedulefree"),
    "schedule_free_adamw": ("schedulefree", "schedulefree"),
    "schedule_free_sgd": ("schedulefree", "schedulefree"),
    "stable_adamw": ("optimi", "torch-optimi"),
}


def check_installed(values: Mapping[str, Any]) -> None:
    """Refuses `report_to` and `optim` values whose package is not installed here (or that
    transformers does not know), which transformers would find only when the Trainer or its
    optimizer is built, after the model has loaded.

    Raises:
        ConfigError: naming the key, the value and the package to install.
    """
    import importlib.util

    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    reporters = values.get("report_to")
    names = [reporters] if isinstance(reporters, str) else list(reporters or [])
    available = None
    for name in names:
        if name in ("none", "all"):  # "all": transformers takes only those installed
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(["none", "all", *INTEGRATION_TO_CALLBACK])
            raise ConfigError(f"`report_to: {name}` is not an integration; use one of {known}.")
        available = available or get_available_reporting_integrations()
        if name in REPORTER_PACKAGES and name not in available:
            package = REPORTER_PACKAGES[name]
            raise ConfigError(
                f"`report_to: {name}` needs the {package} package, which is not installed: "
                f"pip install {package} (or set `report_to: none`)."
            )
    optim = values.get("optim")
    optim = getattr(optim, "value", optim)
    if optim in OPTIMIZER_PACKAGES:
        module, package = OPTIMIZER_PACKAGES[optim]
        if importlib.util.find_spec(module) is None:
            kind = "a bitsandbytes" if (module, package) == _BITSANDBYTES else f"a {module}"
            raise ConfigError(
                f"`optim: {optim}` is {kind} optimizer, and {module} is not installed: "
                f"pip install {package}, or use `optim: adamw_torch`."
            )


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
