"""How `tuneforge webui` and `tuneforge webchat` start Gradio: the address, the public link and
the login. No gradio here: the commands pass `launch_options(...)` to `Blocks.launch`.

A login is `--auth user:pass` (repeatable) and/or the file named by TUNEFORGE_WEBUI_AUTH_FILE,
one `user:pass` a line (blank lines and `#` comments skipped); Gradio's own `auth=` checks it.
A public link (GRADIO_SHARE) without a login is refused unless `--share-without-auth`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError

AUTH_FILE_ENV = "TUNEFORGE_WEBUI_AUTH_FILE"
SHARE_ENV = "GRADIO_SHARE"
TRUE_WORDS = ("1", "true", "yes", "on")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The login flags every command that serves a Gradio page takes."""
    parser.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="USER:PASS",
        help=f"require this login (repeatable; a file of user:pass lines in ${AUTH_FILE_ENV} "
        "keeps passwords out of the process list)",
    )
    parser.add_argument(
        "--share-without-auth",
        action="store_true",
        help=f"allow {SHARE_ENV}=1 (a public link) without a login",
    )


def credentials(text: str, where: str) -> tuple[str, str]:
    """`user:pass` as (user, pass): both non-empty; the password may hold colons."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where}: a login is `user:pass` with both parts set.")
    return user, password


def read_logins(auth: Sequence[str], environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The logins of `--auth` values and of the file named by TUNEFORGE_WEBUI_AUTH_FILE."""
    logins = [credentials(entry, "--auth") for entry in auth]
    file_name = environ.get(AUTH_FILE_ENV, "").strip()
    if file_name:
        path = Path(file_name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{AUTH_FILE_ENV}={file_name}: no such file.")
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                logins.append(credentials(line, f"{path}, line {number}"))
        if not logins:
            raise ConfigError(f"{AUTH_FILE_ENV}={file_name}: the file holds no user:pass line.")
    return logins


def launch_options(
    auth: Sequence[str] = (),
    share_without_auth: bool = False,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments for `Blocks.launch`: server_name, share and auth.

    The address is explicit (GRADIO_SERVER_NAME, else 127.0.0.1), so that the page is never
    exposed beyond this machine unless asked; so is `share`, so that the rule below is exactly
    what Gradio does.

    Raises:
        ConfigError: a public link is asked for without a login (and without
            `share_without_auth`), or a login is malformed.
    """
    environ = os.environ if environ is None else environ
    logins = read_logins(auth, environ)
    share = environ.get(SHARE_ENV, "").strip().lower() in TRUE_WORDS
    if share and not logins:
        if not share_without_auth:
            raise ConfigError(
                f"{SHARE_ENV} asks for a public link, and the page has no login: give "
                f"--auth user:pass (or {AUTH_FILE_ENV}), or --share-without-auth."
            )
        print(
            "WARNING: a public link without a login (--share-without-auth): anyone who has "
            "the link can use this page, and run and read what it runs, as this user.",
            file=sys.stderr,
        )
    return {
        "server_name": environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "share": share,
        "auth": logins or None,
    }
