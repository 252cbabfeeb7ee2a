"""Entry point of the `tuneforge` command.

Only argparse and the standard library are imported here: each subcommand's module is imported
when that subcommand runs, so that `tuneforge --help` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module under tuneforge.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "fine-tune a model from a YAML config (pt, sft, rm, dpo, kto, ppo)"),
    "chat": ("chat", "chat with a model in the terminal"),
    "webchat": ("webchat", "chat with a model in the browser"),
    "webui": ("webui", "the web workbench: train, evaluate, chat and export"),
    "api": ("api", "serve a model behind an OpenAI-compatible API"),
    "export": ("export", "merge adapters, write safetensors shards and an Ollama Modelfile"),
    "eval": ("evaluate", "evaluate a model on a benchmark"),
    "data": ("data", "inspect datasets: preview encoded examples and statistics"),
    "env": ("env", "print library versions and devices, for bug reports"),
    "version": ("version", "print the tuneforge version"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        description="Fine-tune large language models end to end.",
        epilog="Config files take LLaMA-Factory's keys; any key can be overridden as key=value.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module)
        _command_module(module).add_arguments(sub)
    return parser


def _command_module(module: str):
    # Command modules keep their heavy imports inside `run`, so importing them here is cheap.
    return importlib.import_module(f"tuneforge.cli.{module}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from tuneforge.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

    try:
        return _command_module(args.module).run(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
