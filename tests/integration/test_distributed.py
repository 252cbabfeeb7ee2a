"""Distributed training on CPU (gloo): two torchrun processes train exactly as one process does on
the same global batch, only rank 0 writes, the dataset is encoded once; FORCE_TORCHRUN relaunches
`tuneforge train` through torchrun; DeepSpeed configs and the error without DeepSpeed.

The fast tests check the launch logic; the slow ones launch real torchrun processes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import DATA_DIR, REPO
from tuneforge.cli.launch import (
    EXIT_CODES_VARIABLE,
    SignalForwarder,
    free_port,
    launch_exit_code,
    read_exit_codes,
    record_exit_code,
    relaunch_needed,
    torchrun_command,
    worker_main,
)
from tuneforge.config.checks import check_deepspeed
from tuneforge.errors import EXIT_INTERRUPTED, ConfigError
from tuneforge.utils.devices import cpu_only_distributed, device_count

DEEPSPEED_DIR = REPO / "examples" / "deepspeed"
DEEPSPEED_CONFIGS = sorted(DEEPSPEED_DIR.glob("*.json"))
# Keys whose "auto" transformers' DeepSpeed integration fills in (integrations/deepspeed.py).
HF_AUTO_KEYS = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "fp16.enabled",
    "bf16.enabled",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}
PYTHON = [sys.executable, "-m", "torch.distributed.run"]
CPU_ONLY = device_count() == 0
STEPS = 3
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the tiny model is local; CI has no network

# ---------------------------------------------------------------------------------------------
# The torchrun command line from LLaMA-Factory's launch variables


def test_torchrun_command_from_the_launch_variables():
    env = {
        "NNODES": "2",
        "NODE_RANK": "1",
        "NPROC_PER_NODE": "4",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }
    command = torchrun_command(["train", "cfg.yaml", "learning_rate=1e-4"], env)
    assert command == [
        *PYTHON,
        *("--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4"),
        *("--master_addr", "10.0.0.1", "--master_port", "29500"),
        *("-m", "tuneforge.cli.launch", "train", "cfg.yaml", "learning_rate=1e-4"),
    ]
    # torchrun itself reads it as meant
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(command[3:])
    assert (parsed.nnodes, parsed.node_rank, parsed.nproc_per_node) == ("2", 1, "4")
    assert (parsed.master_addr, parsed.master_port, parsed.module) == ("10.0.0.1", 29500, True)
    assert parsed.training_script == "tuneforge.cli.launch"
    assert parsed.training_script_args == ["train", "cfg.yaml", "learning_rate=1e-4"]


@pytest.mark.skipif(not CPU_ONLY, reason="the default process count is the GPU count")
def test_defaults_are_one_local_process_on_a_free_port():
    command = torchrun_command(["train", "cfg.yaml"], {})
    options = dict(zip(command[3:13:2], command[4:13:2]))
    port = options.pop("--master_port")
    assert options == {
        "--nnodes": "1",
        "--node_rank": "0",
        "--nproc_per_node": "1",
        "--master_addr": "127.0.0.1",
    }
    assert 0 < int(port) < 65536


def test_elastic_launch_with_a_rendezvous_id():
    env = {"RDZV_ID": "job7", "MIN_NNODES": "1", "MAX_NNODES": "3", "MAX_RESTARTS": "2"}
    env |= {"NPROC_PER_NODE": "8", "MASTER_ADDR": "node0", "MASTER_PORT": "29400"}
    command = torchrun_command(["train", "c.yaml"], env)
    assert command[3:] == [
        *("--nnodes", "1:3", "--nproc_per_node", "8", "--rdzv_id", "job7"),
        *("--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29400", "--max_restarts", "2"),
        *("-m", "tuneforge.cli.launch", "train", "c.yaml"),
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNODES": "0"}, "NNODES='0'"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "NODE_RANK"),
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two'"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
        ({"NNODES": "2", "NODE_RANK": "1"}, "needs MASTER_ADDR and MASTER_PORT"),
        ({"NNODES": "2", "MASTER_ADDR": "10.0.0.1"}, "needs MASTER_ADDR and MASTER_PORT"),
    ],
)
def test_malformed_launch_variables_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        torchrun_command(["train", "c.yaml"], env)


@pytest.mark.parametrize(
    ("env", "needed"),
    [
        ({"FORCE_TORCHRUN": "1"}, True),
        ({"FORCE_TORCHRUN": "true"}, True),
        ({"FORCE_TORCHRUN": "1", "LOCAL_RANK": "0"}, False),  # already a torchrun worker
        ({"FORCE_TORCHRUN": "0"}, False),
        ({}, False),
    ],
)
@pytest.mark.skipif(not CPU_ONLY, reason="several GPUs relaunch without FORCE_TORCHRUN")
def test_relaunch_needed(env, needed):
    assert relaunch_needed(env) is needed


@pytest.mark.skipif(not CPU_ONLY, reason="with GPUs, DDP runs on them")
def test_cpu_only_machines_train_ddp_on_cpu():
    assert cpu_only_distributed({"WORLD_SIZE": "2"})
    assert not cpu_only_distributed({"WORLD_SIZE": "1"})
    assert not cpu_only_distributed({})


# ---------------------------------------------------------------------------------------------
# The relaunch's exit code and signals


@pytest.mark.parametrize(
    ("torchrun", "workers", "interrupted", "expected"),
    [
        (0, {0: 0, 1: 0}, False, 0),
        (1, {0: 0, 1: 2}, False, 2),  # a config error in the workers: still 2, not torchrun's 1
        (1, {1: 130, 0: 130}, True, EXIT_INTERRUPTED),
        (1, {}, True, EXIT_INTERRUPTED),  # workers killed before they could record a code
        (1, {}, False, 1),
        (-9, {}, False, 137),  # torchrun itself killed
    ],
)
def test_launch_exit_code(torchrun, workers, interrupted, expected):
    assert launch_exit_code(torchrun, workers, interrupted) == expected


def test_workers_record_their_exit_code(tmp_path):
    record_exit_code(2, {EXIT_CODES_VARIABLE: str(tmp_path), "RANK": "1"})
    record_exit_code(0, {EXIT_CODES_VARIABLE: str(tmp_path), "RANK": "0"})
    record_exit_code(5, {"RANK": "3"})  # not under the relaunch: nowhere to write
    assert read_exit_codes(tmp_path) == {0: 0, 1: 2}


def test_a_worker_records_the_exit_code_of_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(EXIT_CODES_VARIABLE, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert worker_main(["train"]) == 2  # a user error (no config): 2, as the CLI exits
    assert read_exit_codes(tmp_path) == {1: 2}
    assert "usage: tuneforge train" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert worker_main(["version"]) == 0
    assert read_exit_codes(tmp_path) == {0: 0, 1: 2}


# A stand-in for torchrun: a supervisor in its own session that passes SIGINT on to its worker
# once (as torchrun does), and a worker that counts the SIGINTs it receives.
FAKE_TORCHRUN = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
count = 0
def on_int(*_):
    global count
    count += 1
    print("worker", count, flush=True)
    if count == 2:
        sys.exit(130)
signal.signal(signal.SIGINT, on_int)
print("ready", flush=True)
while True:
    time.sleep(0.05)
'''], start_new_session=True)
signal.signal(signal.SIGINT, lambda *_: (print("torchrun", flush=True), worker.send_signal(2)))
sys.exit(worker.wait())
"""


def test_first_signal_reaches_the_workers_once_through_torchrun_and_the_second_directly(
    tmp_path,
):
    log = tmp_path / "log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", FAKE_TORCHRUN], stdout=out, start_new_session=True
        )
    forwarder = SignalForwarder(process)
    try:
        with forwarder.installed():
            deadline = time.monotonic() + 30
            while "ready" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            # only with the forwarder in place: pytest's own handler would end the session
            assert signal.getsignal(signal.SIGINT) == forwarder._on_signal
            signal.raise_signal(signal.SIGINT)  # as a Ctrl-C in the terminal would
            while "worker 1" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            signal.raise_signal(signal.SIGINT)
            code = process.wait(timeout=30)
    finally:
        process.kill()
    assert forwarder.forwarded
    assert log.read_text().split() == ["ready", "torchrun", "worker", "1", "worker", "2"]
    assert code == 130


# ---------------------------------------------------------------------------------------------
# DeepSpeed


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_five_deepspeed_configs_ship():
    names = {p.name for p in DEEPSPEED_CONFIGS}
    assert names == {
        "ds_z0_config.json",
        "ds_z2_config.json",
        "ds_z2_offload_config.json",
        "ds_z3_config.json",
        "ds_z3_offload_config.json",
    }


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs_match_their_names_and_leave_values_to_the_yaml(path):
    config = json.loads(path.read_text())
    zero = config["zero_optimization"]
    assert f"ds_z{zero['stage']}_" in path.name
    offload = "offload" in path.name
    assert ("offload_optimizer" in zero) == offload
    assert ("offload_param" in zero) == (offload and zero["stage"] == 3)
    if zero["stage"] == 3:  # output_dir must hold whole weights, not ZeRO shards
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    values = leaves(config)
    auto = {key for key, value in values.items() if value == "auto"}
    assert auto <= HF_AUTO_KEYS, auto - HF_AUTO_KEYS
    # batch sizes, clipping and precision come from the training arguments, never from here
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled"):
        assert values[key] == "auto"


def test_deepspeed_check_names_the_file_or_the_extra(tmp_path):
    check_deepspeed(None)
    with pytest.raises(ConfigError, match="no such file"):
        check_deepspeed(str(tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{stage: 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check_deepspeed(str(broken))
    with pytest.raises(ConfigError, match="a JSON file path or a mapping"):
        check_deepspeed(3)
    for config in (str(DEEPSPEED_DIR / "ds_z2_config.json"), {"zero_optimization": {}}):
        if importlib.util.find_spec("deepspeed") is None:
            with pytest.raises(ConfigError, match=r"pip install 'tuneforge\[deepspeed\]'"):
                check_deepspeed(config)
        else:
            check_deepspeed(config)


# ---------------------------------------------------------------------------------------------
# Real torchrun on the tiny model

# Imported by every Python process on PYTHONPATH: records what each rank writes under
# output_dir (files Python opens for writing, folders made, renames, removals).
WRITE_AUDIT = """
import os, sys
_out, _rank = os.environ.get("AUDIT_OUTPUT_DIR"), os.environ.get("RANK")
if _out and _rank is not None:
    _log = os.path.join(os.environ["AUDIT_LOG_DIR"], "rank" + _rank)
    _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _writing)
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            path, writes = args[0], True
        else:
            return
        if writes and isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_out):
            with open(_log, "a") as f:
                f.write(event + " " + os.fspath(path) + "\\n")
    sys.addaudithook(_hook)
"""


def config_dict(model_dir: Path, method: str, per_device: int, output_dir: Path) -> dict:
    """One global batch of 4 examples a step: 2 per device x 2 accumulation steps in one
    process, or 1 x 2 x 2 processes; sequential order so both see the same batches."""
    keys = {
        "model_name_or_path": str(model_dir),
        "template": "qwen",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": method,
        "dataset": "alpaca_demo",
        "dataset_dir": str(DATA_DIR),
        "data_cache_dir": str(output_dir.parent / "cache"),
        "cutoff_len": 96,
        "max_samples": 16,
        "output_dir": str(output_dir),
        "save_strategy": "steps",
        "save_steps": STEPS,
        "logging_steps": 1,
        "report_to": "none",
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3 if method == "lora" else 1e-4,
        "max_steps": STEPS,
        "disable_shuffling": True,
        "seed": 42,
    }
    if method == "lora":
        keys["lora_target"] = "all"
    return keys


def write_config(folder: Path, model_dir: Path, method: str, per_device: int, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_dict(model_dir, method, per_device, folder / name)))
    return path


def one_process_run(model_dir: Path, folder: Path, method: str) -> Path:
    """The reference: the same global batches in one process, in this one."""
    from tuneforge.config.loader import build_config
    from tuneforge.stages import run_stage

    folder.mkdir()
    out = folder / "out"
    assert run_stage(build_config(config_dict(model_dir, method, 2, out))) == 0
    return out


def run(command: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    audit = tmp_path / "audit"
    (audit / "log").mkdir(parents=True)
    (audit / "sitecustomize.py").write_text(WRITE_AUDIT)
    python_path = os.pathsep.join(filter(None, [str(audit), ENV.get("PYTHONPATH")]))
    env = {**ENV, "PYTHONPATH": python_path, "AUDIT_LOG_DIR": str(audit / "log"), **env}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def losses(output_dir: Path) -> list[tuple[int, float, float]]:
    from tuneforge.training.callbacks import read_trainer_log

    return [
        (r["current_steps"], r["loss"], r["grad_norm"])
        for r in read_trainer_log(output_dir)
        if "loss" in r
    ]


def check_same_training(ddp: Path, reference: Path, weights: str) -> None:
    # one line per logging step (rank 0 only), then the final summary line
    log = (ddp / "trainer_log.jsonl").read_text().splitlines()
    assert len(log) == STEPS + 1, log
    got, want = losses(ddp), losses(reference)
    assert [step for step, _, _ in got] == [step for step, _, _ in want] == [1, 2, 3]
    # The loss over the global batch's trained tokens, and its gradient, whatever the split:
    # rank sums divided by the tokens of all ranks (average_tokens_across_devices).
    flat = [value for _, loss, norm in got for value in (loss, norm)]
    assert flat == pytest.approx([v for _, loss, norm in want for v in (loss, norm)], rel=1e-5)
    results = json.loads((ddp / "all_results.json").read_text())
    expected = json.loads((reference / "all_results.json").read_text())
    for key in ("train_examples", "num_input_tokens_seen"):  # counted over both ranks
        assert results[key] == expected[key]
    # both ranks reached the checkpoint; the saved weights equal one process's
    assert {p.name for p in (ddp / f"checkpoint-{STEPS}").glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    a, b = load_file(ddp / weights), load_file(reference / weights)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def check_only_rank_0_writes(tmp_path: Path, output_dir: Path) -> None:
    logs = tmp_path / "audit" / "log"
    rank0 = (logs / "rank0").read_text().splitlines()
    assert f"open {output_dir / 'trainer_log.jsonl'}" in rank0
    rank1 = (logs / "rank1").read_text().splitlines() if (logs / "rank1").exists() else []
    # transformers makes the checkpoint folder on every rank (each saves its RNG state there)
    assert all(line.startswith(f"os.mkdir {output_dir}") for line in rank1), rank1


@pytest.mark.slow
@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU (gloo) path")
def test_torchrun_lora_trains_as_one_process_on_the_same_global_batch(tiny_model_dir, tmp_path):
    reference = one_process_run(tiny_model_dir, tmp_path / "one", "lora")
    config = write_config(tmp_path, tiny_model_dir, "lora", 1, "ddp")
    output_dir = tmp_path / "ddp"
    command = [*PYTHON, "--nproc_per_node", "2", "--master_port", str(free_port())]
    result = run(
        [*command, "-m", "tuneforge", "train", str(config)],
        tmp_path,
        AUDIT_OUTPUT_DIR=str(output_dir),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "effective batch 4 (1 x 2 x 2 devices)" in result.stderr
    check_same_training(output_dir, reference, "adapter_model.safetensors")
    check_only_rank_0_writes(tmp_path, output_dir)

    # Encoded once, by local rank 0 (main_process_first); rank 1 loads that cache quietly
    # (ranks other than 0 log warnings only), so one encoding and one cache folder.
    assert result.stderr.count("Encoded 16 training") == 1
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), output_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    prompt = tokenizer("Hello", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU (gloo) path")
def test_force_torchrun_relaunches_full_finetuning(tiny_model_dir, tmp_path):
    reference = one_process_run(tiny_model_dir, tmp_path / "one", "full")
    config = write_config(tmp_path, tiny_model_dir, "full", 1, "ddp")
    output_dir = tmp_path / "ddp"
    result = run(
        [sys.executable, "-m", "tuneforge", "train", str(config)],
        tmp_path,
        FORCE_TORCHRUN="1",
        NPROC_PER_NODE="2",
        AUDIT_OUTPUT_DIR=str(output_dir),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    launch = next(line for line in result.stderr.splitlines() if "through torchrun" in line)
    assert "torch.distributed.run --nnodes 1 --node_rank 0 --nproc_per_node 2" in launch
    assert launch.endswith(f"-m tuneforge.cli.launch train {config}")
    check_same_training(output_dir, reference, "model.safetensors")
    check_only_rank_0_writes(tmp_path, output_dir)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(output_dir)
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > 3


def test_deepspeed_without_the_package_exits_2_naming_the_extra(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from tuneforge.cli.main import main

    # the test environment has DeepSpeed (test_sharded.py): hide it from the check only
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a),
    )

    config = write_config(tmp_path, tiny_model_dir, "lora", 1, "out")
    deepspeed = DEEPSPEED_DIR / "ds_z3_config.json"
    assert main(["train", str(config), f"deepspeed={deepspeed}"]) == 2
    error = capsys.readouterr().err
    assert "pip install 'tuneforge[deepspeed]'" in error
    assert "Traceback" not in error
