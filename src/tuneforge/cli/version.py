"""`tuneforge version`."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    from tuneforge import __version__

    print(f"tuneforge {__version__}")
    return 0
