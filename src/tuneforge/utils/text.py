"""Where a file stops being UTF-8 text, for error messages that point at the byte."""

from __future__ import annotations

import codecs
from pathlib import Path

_BOMS = {codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}


def not_utf8(path: str | Path) -> str:
    """Where `path` cannot be read as UTF-8 and how to fix it, e.g. "byte 0xe9 at offset 27
    (line 2, column 5) is not UTF-8; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)".

    Decodes the whole file again (called after a UnicodeDecodeError), so the offset counts from
    the start of the file even when the reader decoded it in chunks. Returns a generic phrase
    when the file decodes after all (it changed in between) or cannot be read.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        return f"it cannot be read ({error.strerror})"
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            return f"it is {name} text (it starts with a {name} byte-order mark); save it as UTF-8"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start
        line = raw.count(b"\n", 0, offset) + 1
        column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
        return (
            f"byte 0x{raw[offset]:02x} at offset {offset} (line {line}, column {column}) is not "
            "UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`)"
        )
    return "it is not UTF-8 text; save it as UTF-8"
