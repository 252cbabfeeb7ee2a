"""`tuneforge chat CONFIG [key=value ...]`: chat with a model in the terminal.

Answers stream as they are generated and the conversation is kept across turns. Type `clear`
to start a new conversation and `exit` (or press Ctrl-D) to quit; Ctrl-C while an answer is
being written stops that answer.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tuneforge.cli.common import add_config_arguments

if TYPE_CHECKING:
    from tuneforge.inference import Engine

WELCOME = "Type a message and press Enter; `clear` starts a new conversation, `exit` quits."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.config.loader import load_config
    from tuneforge.errors import ConfigError
    from tuneforge.inference import load_engine
    from tuneforge.utils.logs import setup_logging

    if not args.config:
        raise ConfigError("usage: tuneforge chat CONFIG.yaml [key=value ...]")
    setup_logging()
    engine = load_engine(load_config(args.config, args.overrides))
    try:
        chat_loop(engine)
    finally:
        engine.close()
    return 0


def chat_loop(engine: Engine) -> None:
    """Reads user turns from stdin until `exit` or end of input; streams each answer."""
    from tuneforge.errors import UserError

    print(WELCOME, flush=True)
    messages: list[dict[str, str]] = []
    while True:
        try:
            query = input("\nUser: ")
        except EOFError:
            print(flush=True)
            return
        command = query.strip()
        if command == "exit":
            return
        if command == "clear":
            messages = []
            print("History cleared.", flush=True)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": query})
        try:
            answer = stream_answer(engine, messages)
        except UserError as error:  # e.g. a conversation too long: say so and go on
            print(f"\nerror: {error}", file=sys.stderr, flush=True)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})


def stream_answer(engine: Engine, messages: list[dict[str, str]]) -> str:
    """Prints the answer as it streams and returns it (cut short by Ctrl-C)."""
    print("Assistant: ", end="", flush=True)
    pieces: list[str] = []
    stream = engine.stream_chat(messages)
    try:
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()  # stops the generation and frees the engine for the next turn
        print(" [stopped]", end="")
    print(flush=True)
    return "".join(pieces)
