"""`tuneforge env`: the versions and devices a bug report needs."""

import argparse
import importlib.metadata
import platform

# Always listed: what every run imports ("not installed" is itself worth reporting).
REQUIRED = (
    "torch",
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "safetensors",
)
# Listed when installed: the extras' libraries.
OPTIONAL = (
    "vllm",
    "bitsandbytes",
    "liger-kernel",
    "deepspeed",
    "flash-attn",
    "gradio",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device_lines() -> list[str]:
    import torch

    lines = [f"CPU threads: {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        lines.append(f"CUDA: {torch.version.cuda}")
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"GPU {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("CUDA: not available")
    if torch.backends.mps.is_available():
        lines.append("MPS: available")
    return lines


def run(args: argparse.Namespace) -> int:
    from tuneforge import __version__

    print(f"- tuneforge: {__version__}")
    print(f"- platform: {platform.platform()}")
    print(f"- python: {platform.python_version()}")
    for package in REQUIRED + OPTIONAL:
        version = _version(package)
        if version != "not installed" or package in REQUIRED:
            print(f"- {package}: {version}")
    try:
        for line in _device_lines():
            print(f"- {line}")
    except ImportError:
        print("- torch: cannot be imported")
    return 0
