"""`tuneforge chat`: not available in this version yet."""

import argparse

from tuneforge.cli.common import add_config_arguments, not_available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return not_available("chat")
