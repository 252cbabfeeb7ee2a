"""Launching distributed training: the torchrun relaunch LLaMA-Factory users expect.

Under torchrun (`torchrun --nproc_per_node N -m tuneforge train CONFIG`) nothing here is needed
for DDP: transformers' Trainer wraps the model in DistributedDataParallel. On a machine without
an accelerator, `utils.devices.cpu_only_distributed()` tells the training arguments to train on
CPU, so that the processes form a gloo group instead of each training alone. The DeepSpeed
config is checked with the other config rules (config/checks.py).

`tuneforge train` relaunches itself through torchrun when FORCE_TORCHRUN is set or several GPUs
are visible, reading the launch variables of LLaMA-Factory's `cli.py`:

    NNODES (1), NODE_RANK (0), NPROC_PER_NODE (GPU count, at least 1), MASTER_ADDR (127.0.0.1),
    MASTER_PORT (a free port), and for an elastic launch RDZV_ID, MIN_NNODES, MAX_NNODES,
    MAX_RESTARTS (0). OPTIM_TORCH (on) sets two CUDA allocator defaults in the workers.

Departures from LLaMA-Factory: several nodes need MASTER_ADDR and MASTER_PORT (a random port
differs from node to node, and the run would hang); the launch exits with the workers' own exit
code (torchrun only says 0 or 1), so a config error still exits 2; torchrun runs in its own
session and signals reach the workers once: the first Ctrl-C or SIGTERM stops them after the
current step with a checkpoint, the second stops them at once.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tuneforge.errors import EXIT_INTERRUPTED, ConfigError
from tuneforge.utils.devices import device_count, env_enabled

# Set by the relaunch only: the folder where each worker writes its exit code.
EXIT_CODES_VARIABLE = "TUNEFORGE_EXIT_CODES_DIR"
# torchrun waits this long for workers to exit after passing on a signal, then kills them; a
# checkpoint of a large model takes longer to write than torchrun's default of 30 s.
SHUTDOWN_TIMEOUT_S = "600"
NPROC_WORDS = ("auto", "cpu", "gpu", "cuda", "xpu")  # torchrun's own --nproc_per_node values


def relaunch_needed(environ: Mapping[str, str] | None = None) -> bool:
    """True when not already under a launcher and FORCE_TORCHRUN is set or several GPUs exist."""
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" in environ:  # torchrun, accelerate and deepspeed launchers all set it
        return False
    return env_enabled("FORCE_TORCHRUN", environ) or device_count() > 1


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _positive_int(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, default).strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r}: expected a whole number of at least 1.")
    return value


def _launch_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The launch variables, with LLaMA-Factory's defaults, checked."""
    nnodes = _positive_int(environ, "NNODES", "1")
    node_rank = environ.get("NODE_RANK", "0").strip()
    if not node_rank.isdigit() or int(node_rank) >= int(nnodes):
        raise ConfigError(f"NODE_RANK={node_rank!r}: expected 0 to {int(nnodes) - 1} (NNODES).")
    nproc = environ.get("NPROC_PER_NODE", "").strip()
    if not nproc:
        nproc = str(max(device_count(), 1))
    elif nproc not in NPROC_WORDS:
        nproc = _positive_int(environ, "NPROC_PER_NODE", nproc)
    several_nodes = int(nnodes) > 1 or "MAX_NNODES" in environ
    if several_nodes and not (environ.get("MASTER_ADDR") and environ.get("MASTER_PORT")):
        raise ConfigError(
            f"training on several nodes (NNODES={nnodes}) needs MASTER_ADDR and MASTER_PORT: "
            "the address of the node with NODE_RANK=0 and a free port there, the same on "
            "every node."
        )
    port = environ.get("MASTER_PORT") or str(free_port())
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"MASTER_PORT={port!r}: expected a port number (1 to 65535).")
    return {
        "nnodes": nnodes,
        "node_rank": node_rank,
        "nproc_per_node": nproc,
        "master_addr": environ.get("MASTER_ADDR") or "127.0.0.1",
        "master_port": port,
    }


def torchrun_command(
    arguments: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The torchrun command line that runs `tuneforge ARGUMENTS` in every process.

    Args:
        arguments: the tuneforge command line after `tuneforge`, e.g. ["train", "cfg.yaml"].
        environ: the launch variables (default: this process's environment).

    Returns:
        The command, starting with this Python interpreter (`-m torch.distributed.run` is
        torchrun from the same environment, wherever PATH points).

    Raises:
        ConfigError: a launch variable is malformed, or several nodes lack a master address.
    """
    environ = os.environ if environ is None else environ
    v = _launch_values(environ)
    command = [sys.executable, "-m", "torch.distributed.run"]
    rdzv_id = environ.get("RDZV_ID")
    if rdzv_id:  # elastic launch: nodes join a c10d rendezvous, ranks are assigned
        nnodes = v["nnodes"]
        if environ.get("MIN_NNODES") and environ.get("MAX_NNODES"):
            nnodes = f"{environ['MIN_NNODES']}:{environ['MAX_NNODES']}"
        command += ["--nnodes", nnodes, "--nproc_per_node", v["nproc_per_node"]]
        command += ["--rdzv_id", rdzv_id, "--rdzv_backend", "c10d"]
        command += ["--rdzv_endpoint", f"{v['master_addr']}:{v['master_port']}"]
    else:
        for name in ("nnodes", "node_rank", "nproc_per_node", "master_addr", "master_port"):
            command += [f"--{name}", v[name]]
    if environ.get("MAX_RESTARTS") or rdzv_id:
        command += ["--max_restarts", _positive_int_or_zero(environ, "MAX_RESTARTS")]
    # The workers run this module, which records their exit code for the relaunch.
    return [*command, "-m", "tuneforge.cli.launch", *arguments]


def _positive_int_or_zero(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "0").strip()
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r}: expected a whole number (0 or more).")
    return value


def worker_environment(environ: Mapping[str, str], exit_codes_dir: str) -> dict[str, str]:
    """The environment of torchrun and its workers."""
    env = dict(environ)
    env[EXIT_CODES_VARIABLE] = exit_codes_dir
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    if env_enabled("OPTIM_TORCH", environ, default="1"):  # LLaMA-Factory's DDP defaults
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        env.setdefault("TORCH_NCCL_AVOID_RECORD_STREAMS", "1")
    return env


def relaunch_with_torchrun(arguments: Sequence[str]) -> int:
    """Runs `tuneforge ARGUMENTS` under torchrun and returns the workers' exit code.

    Prints the torchrun command first. SIGINT and SIGTERM are passed on (see the module
    docstring); while torchrun runs this process only waits.

    Args:
        arguments: the tuneforge command line after `tuneforge`, e.g. ["train", "cfg.yaml"].

    Returns:
        0 when every worker succeeded, else the first non-zero worker exit code by rank (130
        after a stop on a signal), or torchrun's own code when no worker reported one.
    """
    command = torchrun_command(arguments)
    print(f"[tuneforge] Launching through torchrun: {shlex.join(command)}", file=sys.stderr)
    sys.stderr.flush()
    with tempfile.TemporaryDirectory(prefix="tuneforge-exit-") as codes_dir:
        env = worker_environment(os.environ, codes_dir)
        # Own session: a Ctrl-C in the terminal reaches torchrun only through us, once.
        process = subprocess.Popen(command, env=env, start_new_session=True)
        forwarder = SignalForwarder(process)
        with forwarder.installed():
            returncode = process.wait()
        codes = read_exit_codes(codes_dir)
    return launch_exit_code(returncode, codes, forwarder.forwarded)


def launch_exit_code(torchrun_code: int, worker_codes: Mapping[int, int], interrupted: bool) -> int:
    """The exit code of a relaunch: the workers', where torchrun only says 0 or 1."""
    if torchrun_code == 0:
        return 0
    failed = [code for _, code in sorted(worker_codes.items()) if code != 0]
    if failed:
        return failed[0]
    if interrupted:
        return EXIT_INTERRUPTED
    return 128 - torchrun_code if torchrun_code < 0 else torchrun_code  # -N: killed by signal N


def read_exit_codes(folder: str | Path) -> dict[int, int]:
    """Rank -> exit code, for each worker that recorded one in `folder`."""
    codes = {}
    for path in Path(folder).glob("rank-*"):
        with contextlib.suppress(ValueError):
            codes[int(path.name.removeprefix("rank-"))] = int(path.read_text().strip())
    return codes


# The workers stop after a step on the first of these, and at once on the second.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# torchrun passes these on to the workers too: a closed terminal, Ctrl-\.
OTHER_SIGNALS = tuple(getattr(signal, n) for n in ("SIGHUP", "SIGQUIT") if hasattr(signal, n))


class SignalForwarder:
    """Passes signals on to a torchrun process running in its own session.

    The first SIGINT/SIGTERM goes to torchrun, which sends it to every worker once: they stop
    after the current step and save a checkpoint. Later ones go to the workers themselves,
    whose second signal means "quit now", as a second Ctrl-C does in a single process.
    SIGHUP and SIGQUIT go to torchrun, which passes them on as it does when run directly.
    """

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.forwarded = False
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalForwarder]:
        """Handles the signals while the block runs, then restores the previous handlers."""
        if threading.current_thread() is threading.main_thread():  # Python allows no other
            for signum in (*STOP_SIGNALS, *OTHER_SIGNALS):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum not in STOP_SIGNALS:
            _send(self.process.pid, signum)
            return
        name = signal.Signals(signum).name
        if not self.forwarded:
            self.forwarded = True
            print(
                f"[tuneforge] {name}: the workers stop after this step and save a checkpoint; "
                "press Ctrl-C again to stop them at once.",
                file=sys.stderr,
            )
            _send(self.process.pid, signum)
            return
        workers = child_pids(self.process.pid)
        print(f"[tuneforge] {name}: stopping the workers at once.", file=sys.stderr)
        for pid in workers or [self.process.pid]:
            _send(pid, signum)


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc; empty where it cannot be read)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def record_exit_code(code: int, environ: Mapping[str, str] | None = None) -> None:
    """Writes this worker's exit code where the relaunch reads it (no-op outside a relaunch)."""
    environ = os.environ if environ is None else environ
    folder = environ.get(EXIT_CODES_VARIABLE)
    if folder and os.path.isdir(folder):
        Path(folder, f"rank-{environ.get('RANK', '0')}").write_text(str(code))


def worker_main(argv: Sequence[str]) -> int:
    """`tuneforge ARGV` in one torchrun worker, recording its exit code for the relaunch."""
    from tuneforge.cli.main import main

    code = 1  # what Python exits with when an exception escapes
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse errors
        code = stop.code if isinstance(stop.code, int) else 1
        raise
    finally:
        record_exit_code(code)
    return code


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
