"""Progress bars for the steps that can take minutes (encoding, prediction, merging): a count,
a rate and an estimated time left on stderr, as transformers' own bars show them."""

from __future__ import annotations

import os
from typing import Any


def progress_bar(total: int, description: str, unit: str, disable: bool = False) -> Any:
    """A tqdm bar of `total` `unit`s (call `.update(n)`, then `.close()`, or use it in a
    `with`); off with `disable`, under TUNEFORGE_NO_PROGRESS=1, and on ranks other than 0."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    quiet = disable or os.environ.get("TUNEFORGE_NO_PROGRESS") == "1"
    quiet = quiet or os.environ.get("LOCAL_RANK", "0") != "0"
    return tqdm(total=total, desc=description, unit=unit, disable=quiet, dynamic_ncols=True)
