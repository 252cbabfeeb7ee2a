"""`tuneforge webui [--saves-dir saves] [--lang en|zh] [--auth user:pass]`: the web workbench in
the browser.

Train, evaluate, chat with and export models without writing a YAML: every run is a
`tuneforge` command on a YAML the page shows. It listens on 127.0.0.1:7860 unless
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise. `--auth user:pass` (or a file of
`user:pass` lines named by TUNEFORGE_WEBUI_AUTH_FILE) asks for a login; GRADIO_SHARE=1 asks
Gradio for a public link, and is refused without a login unless `--share-without-auth`.
Closing the server (Ctrl-C) stops a running training job cleanly, with a checkpoint.
"""

from __future__ import annotations

import argparse

from tuneforge.webui.launch import add_launch_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--saves-dir",
        default="saves",
        help="where runs are listed from and written to: <saves>/<model>/<method>/<run>",
    )
    parser.add_argument("--lang", default="en", choices=("en", "zh"), help="page language")
    add_launch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tuneforge.webui.chat import import_gradio
    from tuneforge.webui.launch import launch_options

    options = launch_options(args.auth, args.share_without_auth)  # refuse before any import
    import_gradio()  # a NotAvailableError naming the `web` extra when gradio is missing
    from tuneforge.utils.logs import setup_logging
    from tuneforge.webui.app import STYLE, create_app

    setup_logging()
    workbench = create_app(args.saves_dir, lang=args.lang)
    try:
        workbench.blocks.queue().launch(**options, css=STYLE, footer_links=["gradio", "settings"])
    finally:
        workbench.registry.shutdown()
    return 0
