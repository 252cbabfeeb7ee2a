"""Arguments and helpers shared by subcommands."""

from __future__ import annotations

import argparse

from tuneforge.errors import NotAvailableError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A YAML config path followed by any number of key=value overrides."""
    parser.add_argument("config", nargs="?", help="YAML config file (LLaMA-Factory keys)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")


def not_available(command: str) -> int:
    raise NotAvailableError(f"`tuneforge {command}` is not available in this version yet.")
