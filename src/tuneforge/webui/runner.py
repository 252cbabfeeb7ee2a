"""Runs `tuneforge train` / `tuneforge export` as subprocesses and keeps track of them.

The registry belongs to the server, not to a browser session: any page that connects (again)
sees the running job. The child's output goes to a file, never to a pipe the server would have
to drain, so a closed browser (or a busy server) can never stall training. The child runs in a
session of its own, so a Ctrl-C in the server's terminal reaches the server only; the server
then stops the child the clean way (`shutdown`). Abort sends SIGINT, which training turns into
a stop at the next step with a resumable checkpoint (exit status 130).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.webui.locale import FormError


@dataclass
class Job:
    """One `tuneforge` subprocess and the files it reads and writes."""

    kind: str  # train | predict | export
    command: list[str]  # as a user would type it
    config_path: Path
    log_path: Path
    output_dir: Path
    process: subprocess.Popen
    started_at: float = field(default_factory=time.time)
    abort_requested: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def abort(self) -> bool:
        """Asks the run to stop cleanly (SIGINT once); False when it has already ended."""
        if not self.running:
            return False
        if not self.abort_requested:  # a second SIGINT would force-quit without a checkpoint
            self.abort_requested = True
            self.process.send_signal(signal.SIGINT)
        return True

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)


def user_command(subcommand: str, config_path: Path) -> list[str]:
    """The command the page shows for a run."""
    return ["tuneforge", subcommand, str(config_path)]


class JobRegistry:
    """The jobs this server started: at most one runs at a time (they share the device).

    Args:
        program: What runs `<subcommand> <config>`: this interpreter's tuneforge by default
            (whatever PATH says), another program in tests.
    """

    def __init__(self, program: tuple[str, ...] = (sys.executable, "-m", "tuneforge")) -> None:
        self.program = program
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self, kind: str, subcommand: str, config_text: str, job_dir: Path, output_dir: Path
    ) -> Job:
        """Writes `config_text` to job_dir/webui_<kind>.yaml and runs
        `tuneforge <subcommand>` on it, its output going to job_dir/webui_<kind>.log.

        Raises:
            FormError: another job is still running.
        """
        with self._lock:
            busy = self.running()
            if busy is not None:
                raise FormError("msg_busy", kind=busy.kind, path=str(busy.output_dir))
            job_dir.mkdir(parents=True, exist_ok=True)
            config_path = job_dir / f"webui_{kind}.yaml"
            config_path.write_text(config_text, encoding="utf-8")
            log_path = job_dir / f"webui_{kind}.log"
            argv = [*self.program, subcommand, str(config_path)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            started = time.time()
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            job = Job(
                kind,
                user_command(subcommand, config_path),
                config_path,
                log_path,
                output_dir,
                process,
                started,
            )
            self._jobs[kind] = job
            return job

    def latest(self, kind: str) -> Job | None:
        """The last job of `kind` started by this server, running or not."""
        return self._jobs.get(kind)

    def running(self) -> Job | None:
        return next((job for job in self._jobs.values() if job.running), None)

    def shutdown(self, timeout: float = 120.0) -> None:
        """Stops every running job cleanly and waits for it (the server is closing)."""
        for job in list(self._jobs.values()):
            if job.abort():
                try:
                    job.wait(timeout)
                except subprocess.TimeoutExpired:
                    job.process.kill()
