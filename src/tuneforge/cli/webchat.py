"""`tuneforge webchat CONFIG [key=value ...]`: chat with a model in the browser.

The page (Gradio) streams answers and lets you edit the system prompt, tools and generation
settings. It listens on 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say
otherwise. `--auth user:pass` (or TUNEFORGE_WEBUI_AUTH_FILE) asks for a login, as
`tuneforge webui` does; GRADIO_SHARE=1 asks Gradio for a public link, and is refused without a
login unless `--share-without-auth`.
"""

from __future__ import annotations

import argparse

from tuneforge.cli.common import add_config_arguments
from tuneforge.webui.launch import add_launch_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_launch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.config.loader import load_config
    from tuneforge.errors import ConfigError
    from tuneforge.utils.logs import setup_logging
    from tuneforge.webui.chat import build_chat_app, import_gradio
    from tuneforge.webui.launch import launch_options

    if not args.config:
        raise ConfigError("usage: tuneforge webchat CONFIG.yaml [key=value ...]")
    options = launch_options(args.auth, args.share_without_auth)  # before the model loads
    import_gradio()  # fail before the model loads when the extra is missing
    setup_logging()
    config = load_config(args.config, args.overrides)
    from tuneforge.inference import load_engine

    engine = load_engine(config)
    try:
        build_chat_app(engine, config).queue().launch(**options)  # GRADIO_SERVER_PORT: Gradio's
    finally:
        engine.close()
    return 0
