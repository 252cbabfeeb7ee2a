"""`tuneforge chat` driven through its stdin, as a user would type."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chat_model import HELLO, JOKE, cached_chat_model, chat_config, random_lora
from tuneforge.config.loader import load_config
from tuneforge.inference import load_engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "inference"


@pytest.fixture(scope="module")
def chat_yaml(tiny_model_dir, tmp_path_factory):
    model_dir = cached_chat_model(tiny_model_dir)
    path = tmp_path_factory.mktemp("chat") / "chat.yaml"
    # float32 on any device, like chat_config: answers compare with the in-process engine's
    path.write_text(
        f"model_name_or_path: {model_dir}\ntemplate: qwen\ndo_sample: false\ninfer_dtype: float32\n"
    )
    return path


def chat(config_path, typed: str, *overrides: str, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", "chat", str(config_path), *overrides],
        input=typed,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def answers(stdout: str) -> list[str]:
    """The text after each `Assistant: ` up to the next prompt."""
    return [part.split("\n\nUser: ")[0].rstrip("\n") for part in stdout.split("Assistant: ")[1:]]


@pytest.mark.slow
def test_two_turns_clear_and_exit(chat_yaml, tiny_model_dir):
    alone = load_engine(chat_config(cached_chat_model(tiny_model_dir)))
    try:
        joke_alone = alone.chat([{"role": "user", "content": "Tell me a joke."}])[0].text
    finally:
        alone.close()
    assert joke_alone != JOKE  # the model tells the joke only after its greeting

    result = chat(chat_yaml, "hi\nTell me a joke.\nclear\nTell me a joke.\nexit\nhi\n")
    assert result.returncode == 0, result.stderr
    # the second turn saw the first (history); after `clear` the same question is asked alone
    assert answers(result.stdout) == [HELLO, JOKE, joke_alone]
    assert "History cleared." in result.stdout
    assert result.stdout.count("Assistant: ") == 3  # nothing was answered after `exit`


def test_end_of_input_quits_cleanly(chat_yaml):
    result = chat(chat_yaml, "hi\n")
    assert result.returncode == 0, result.stderr
    assert answers(result.stdout) == [HELLO]
    assert "Traceback" not in result.stderr


def test_overrides_reach_the_engine(chat_yaml):
    result = chat(chat_yaml, "hi\nexit\n", "max_new_tokens=3")
    assert result.returncode == 0, result.stderr
    assert answers(result.stdout) == ["Hello!"]


def test_user_errors_exit_2_without_a_traceback(chat_yaml, tmp_path):
    missing = chat(chat_yaml, "", "model_name_or_path=" + str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    if importlib.util.find_spec("vllm") is None:
        vllm = chat(chat_yaml, "", "infer_backend=vllm")
        assert vllm.returncode == 2
        assert "pip install 'tuneforge[vllm]'" in vllm.stderr
    no_config = subprocess.run(
        [sys.executable, "-m", "tuneforge", "chat"], capture_output=True, text=True, timeout=60
    )
    assert no_config.returncode == 2
    assert "usage: tuneforge chat" in no_config.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(tiny_model_dir, tmp_path):
    # the random tiny model writes newlines until max_new_tokens: a long answer to interrupt
    config = tmp_path / "long.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ntemplate: qwen\ndo_sample: false\n"
        "max_new_tokens: 1900\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "chat", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        process.stdin.write("hi\n")
        process.stdin.flush()
        seen = ""
        while not seen.endswith("Assistant: \n"):  # the answer has started streaming
            char = process.stdout.read(1)
            assert char, f"chat ended early: {seen!r}"
            seen += char
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate("exit\n", timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0
    assert " [stopped]\n" in out
    assert out.rstrip().endswith("User:")  # a new prompt after the stopped answer


def test_inference_examples_are_valid_and_say_their_command():
    names = sorted(path.name for path in EXAMPLES.glob("*.yaml"))
    assert names == ["chat_full.yaml", "chat_lora.yaml", "chat_vllm.yaml"]
    for name in names:
        path = EXAMPLES / name
        assert path.read_text().startswith(f"# tuneforge chat examples/inference/{name}\n")
        config = load_config(path)
        assert config.data.template == "qwen"
    assert load_config(EXAMPLES / "chat_vllm.yaml").model.infer_backend == "vllm"
    # the LoRA examples chat with what examples/sft_lora.yaml writes
    trained = yaml.safe_load((EXAMPLES.parent / "sft_lora.yaml").read_text())["output_dir"]
    assert load_config(EXAMPLES / "chat_lora.yaml").model.adapter_name_or_path == [trained]


@pytest.mark.slow
def test_the_lora_example_chats_with_its_adapter(tiny_model_dir, tmp_path):
    model_dir = cached_chat_model(tiny_model_dir)
    adapter = random_lora(model_dir, tmp_path / "adapter", seed=7)
    engine = load_engine(chat_config(model_dir, adapter_name_or_path=[adapter]))
    try:
        expected = engine.chat([{"role": "user", "content": "hi"}], max_new_tokens=16)[0].text
    finally:
        engine.close()
    assert expected != HELLO
    overrides = (
        f"model_name_or_path={model_dir}",
        f"adapter_name_or_path={adapter}",
        "do_sample=false",
        "infer_dtype=float32",
        "max_new_tokens=16",
    )
    result = chat(EXAMPLES / "chat_lora.yaml", "hi\nexit\n", *overrides)
    assert result.returncode == 0, result.stderr
    assert answers(result.stdout) == [expected]
