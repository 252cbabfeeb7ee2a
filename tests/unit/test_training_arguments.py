"""training/arguments.py's rules that need the device: FSDP is refused where it cannot shard
(CPU), with the reason and what to use instead, and DeepSpeed on CPU gets the launch
variables of a one-process world when no launcher started it (the runs themselves are in
tests/integration/test_sharded.py)."""

from __future__ import annotations

import pytest
import yaml

from tuneforge.config.loader import build_config
from tuneforge.errors import ConfigError
from tuneforge.training import arguments
from tuneforge.training.arguments import effective_training_arguments, one_process_world
from tuneforge.utils.devices import device_count

MISSING_MODEL = "/no/such/model"  # nothing here loads a model
FSDP_KEYS = [{"fsdp": "full_shard auto_wrap"}, {"fsdp_config": {"min_num_params": 0}}]


def config(tmp_path, **keys):
    return build_config({"model_name_or_path": MISSING_MODEL, "output_dir": str(tmp_path), **keys})


@pytest.mark.parametrize("keys", FSDP_KEYS, ids=["fsdp", "fsdp_config"])
def test_fsdp_on_a_cpu_only_machine_is_refused_with_the_reason(tmp_path, monkeypatch, keys):
    """accelerate applies FSDP on GPU kinds only: on CPU the run would silently be DDP."""
    monkeypatch.setattr(arguments, "device_count", lambda: 0)
    (name,) = keys
    with pytest.raises(ConfigError) as error:
        effective_training_arguments(config(tmp_path, **keys))
    message = str(error.value)
    assert message.startswith(f"`{name}: ")
    assert "accelerate does not apply FSDP" in message
    assert "plain DDP" in message
    assert "Remove `fsdp` and `fsdp_config`" in message
    assert "deepspeed: examples/deepspeed/ds_z3_config.json" in message


def test_fsdp_with_use_cpu_is_refused_even_beside_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="`fsdp: full_shard`: FSDP shards"):
        effective_training_arguments(config(tmp_path, fsdp="full_shard", use_cpu=True))


def test_fsdp_with_a_gpu_reaches_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments, "device_count", lambda: 1)
    args = effective_training_arguments(config(tmp_path, fsdp="full_shard"))
    assert args.fsdp and args.fsdp_plugin_args is not None


@pytest.mark.skipif(device_count() > 0, reason="a GPU machine would train with FSDP")
def test_train_with_fsdp_on_cpu_exits_2_naming_the_key(tmp_path, capsys):
    from tuneforge.cli.main import main

    path = tmp_path / "fsdp.yaml"
    keys = {"model_name_or_path": MISSING_MODEL, "dataset": "identity", "template": "qwen"}
    keys |= {"output_dir": str(tmp_path / "out"), "do_train": True, "fsdp": "full_shard"}
    path.write_text(yaml.safe_dump(keys), encoding="utf-8")
    assert main(["train", str(path)]) == 2
    assert "error: `fsdp: full_shard`: FSDP shards a model across GPUs" in capsys.readouterr().err


def test_without_a_launcher_deepspeed_gets_a_world_of_one_process():
    world = one_process_world({})
    assert {k: world[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")} == {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }
    assert world["MASTER_ADDR"] == "127.0.0.1"
    assert world["MASTER_PORT"].isdigit() and 0 < int(world["MASTER_PORT"]) < 65536
    # a master the user chose is kept
    chosen = one_process_world({"MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29555"})
    assert (chosen["MASTER_ADDR"], chosen["MASTER_PORT"]) == ("10.0.0.2", "29555")


def test_under_a_launcher_nothing_is_added_and_a_partial_launch_is_refused():
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    torchrun |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert one_process_world(torchrun) == {}
    assert one_process_world({"OMPI_COMM_WORLD_SIZE": "2"}) == {}  # MPI: DeepSpeed asks MPI
    with pytest.raises(ConfigError, match="but not RANK, MASTER_ADDR, MASTER_PORT; start it"):
        one_process_world({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
