"""`tuneforge export CONFIG [key=value ...]`: merge LoRA adapters into the base model (each
merge verified), or GPTQ-quantize a model, and write safetensors shards of at most
`export_size` GB, the tokenizer with the template's chat_template, a generation config that
stops on the template's stop words, and an Ollama Modelfile into `export_dir`."""

from __future__ import annotations

import argparse

from tuneforge.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError

    if not args.config:
        raise ConfigError("usage: tuneforge export CONFIG.yaml [key=value ...]")
    from tuneforge.config.loader import load_config
    from tuneforge.export import export_model
    from tuneforge.utils.logs import setup_logging

    setup_logging()
    config = load_config(args.config, args.overrides)
    result = export_model(config)
    print(f"Exported to {result.export_dir}: {len(result.weight_files)} weight file(s).")
    for check in result.merges:
        print(
            f"  merged {check.adapter}: {check.parameters} weights changed; logits match "
            f"base + adapter to {check.logit_error:.2g}"
        )
    print(f"  Ollama: ollama create NAME -f {result.export_dir / 'Modelfile'}")
    if result.hub_url:
        print(f"  pushed to {result.hub_url}")
    return 0
