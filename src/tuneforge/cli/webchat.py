"""`tuneforge webchat CONFIG [key=value ...]`: chat with a model in the browser.

The page (Gradio) streams answers and lets you edit the system prompt, tools and generation
settings. It listens on 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say
otherwise; GRADIO_SHARE=1 asks Gradio for a public link.
"""

from __future__ import annotations

import argparse

from tuneforge.cli.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.config.loader import load_config
    from tuneforge.errors import ConfigError
    from tuneforge.utils.logs import setup_logging
    from tuneforge.webui.chat import build_chat_app, import_gradio

    if not args.config:
        raise ConfigError("usage: tuneforge webchat CONFIG.yaml [key=value ...]")
    import_gradio()  # fail before the model loads when the extra is missing
    setup_logging()
    config = load_config(args.config, args.overrides)
    from tuneforge.inference import load_engine

    engine = load_engine(config)
    try:
        # Gradio reads GRADIO_SERVER_NAME (default 127.0.0.1), GRADIO_SERVER_PORT, GRADIO_SHARE
        build_chat_app(engine, config).queue().launch()
    finally:
        engine.close()
    return 0
