"""The `tuneforge` command as a subprocess: fast help, versions, user errors exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ("train", "chat", "webchat", "webui", "api", "export", "eval", "env", "version", "data")


def tuneforge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_help_lists_every_command_without_importing_torch():
    probe = (
        "import sys; from tuneforge.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout
    for command in COMMANDS:
        assert command in result.stdout


def test_version_and_env():
    from tuneforge import __version__

    assert tuneforge("version").stdout.strip() == f"tuneforge {__version__}"
    env = tuneforge("env").stdout
    for package in ("python", "torch", "transformers", "peft", "datasets", "accelerate"):
        assert f"- {package}: " in env
    assert "CUDA:" in env


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("data", "preview", "missing.yaml"), "config file missing.yaml does not exist"),
        (("data", "preview", "CONFIG", "learnig_rate=1"), "Did you mean: `learning_rate`"),
        (("data", "preview", "CONFIG", "model_name_or_path=/nowhere/model"), "does not exist"),
        (("chat", "CONFIG"), "neither a local folder nor in the Hugging Face cache"),
        (("train", "CONFIG", "stage=grpo", "output_dir=out"), "got 'grpo', expected one of"),
        (("train", "CONFIG"), "`output_dir` is required"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, args, expected):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: x\ndataset: identity\ntemplate: qwen\n")
    result = tuneforge(*(str(config) if a == "CONFIG" else a for a in args), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
