"""Whether the Hugging Face Hub can be reached, decided in seconds rather than by a hang."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers a TCP connection within `timeout` seconds (False when the
    user has set HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def looks_like_path(name: str) -> bool:
    """A name the user meant as a folder rather than a hub id ("org/model")."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep in name[:1]
