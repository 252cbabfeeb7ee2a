"""`tuneforge webui [--saves-dir saves] [--lang en|zh]`: the web workbench in the browser.

Train, evaluate, chat with and export models without writing a YAML: every run is a
`tuneforge` command on a YAML the page shows. It listens on 127.0.0.1:7860 unless
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise; GRADIO_SHARE=1 asks Gradio for a public
link. Closing the server (Ctrl-C) stops a running training job cleanly, with a checkpoint.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--saves-dir",
        default="saves",
        help="where runs are listed from and written to: <saves>/<model>/<method>/<run>",
    )
    parser.add_argument("--lang", default="en", choices=("en", "zh"), help="page language")


def run(args: argparse.Namespace) -> int:
    from tuneforge.webui.chat import import_gradio

    import_gradio()  # a NotAvailableError naming the `web` extra when gradio is missing
    from tuneforge.utils.logs import setup_logging
    from tuneforge.webui.app import STYLE, create_app

    setup_logging()
    workbench = create_app(args.saves_dir, lang=args.lang)
    try:
        # Gradio reads GRADIO_SERVER_PORT and GRADIO_SHARE itself; the address is explicit so
        # that the page is never exposed beyond this machine unless asked.
        workbench.blocks.queue().launch(
            server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            css=STYLE,
            footer_links=["gradio", "settings"],
        )
    finally:
        workbench.registry.shutdown()
    return 0
