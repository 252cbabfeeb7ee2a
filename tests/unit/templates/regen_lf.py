"""Rewrite the LLaMA-Factory goldens that `test_lf_parity.py` compares every template with.

Run from the repository root, with LLaMA-Factory 0.9.5 installed in a second virtualenv::

    .venv/bin/python -m tests.unit.templates.regen_lf [--lf-python PATH] [--only NAME ...]

This side (tuneforge's virtualenv) builds the golden tokenizer: the tiny Llama-style tokenizer
(`tuneforge.models.tiny`) with every template's markers and stop words as single tokens, plus the
few token names LLaMA-Factory looks up by id (`LF_ONLY_TOKENS`), and saves it to a temporary
folder. The same file then runs under LLaMA-Factory's python (`--lf-side JOB OUT`, which imports
llamafactory and never tuneforge): it loads that folder, fits it to each template with
`get_template_and_fix_tokenizer` and encodes each conversation of `cases.lf_records(name)` with
`Template.encode_multiturn` (the SFT path) and, for reasoning templates, `encode_oneturn` (the
preference and KTO path) and `encode_multiturn(discarding_history_cot=True)` (SFT with
`mask_history`), for each `enable_thinking` / `preserve_thinking` setting. It also
renders LLaMA-Factory's thirteen tool formats. What it returns is written to `golden_lf/`:

- `_meta.json`: the tokenizer recipe (so tests rebuild the same tokenizer), a fingerprint of its
  vocabulary, LLaMA-Factory's version and the date its llama3 tool prompt was given;
- `<template>.json`: per record the prompt / response token ids of each turn (or the error
  LLaMA-Factory raised), the eos id and LLaMA-Factory's template class and flags;
- `_tool_formats.json`: each tool format's tool prompt and call texts.

The tests need neither LLaMA-Factory nor this script. Review `git diff tests/unit/templates/
golden_lf` after a rewrite: the goldens are the reference the parity test holds tuneforge to.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).with_name("golden_lf")
DEFAULT_LF_PYTHON = Path("~/.cache/tuneforge-peer/venv/bin/python").expanduser()
LF_VERSION = "0.9.5"
# LLaMA-Factory's llama3 tool prompt writes today's date; the LF side freezes it to this one.
FROZEN_DATE = (2024, 7, 26)
# Token names that LLaMA-Factory's slots look up by id ({"token": ...}) and that no tuneforge
# template lists as a marker: chatglm3's prefix [gMASK] + sop. A marker would make every "sop"
# in text a special token of the tiny test tokenizer.
LF_ONLY_TOKENS = ("sop",)
TOKENIZER_ARCH = "llama"  # it has a bos, so that bos slots are seen in the ids
TOKENIZER_VOCAB = 4096

# Calls whose rendering each tool format is compared on (`_tool_formats.json`).
TOOL_FORMAT_CALLS: dict[str, list[dict[str, Any]]] = {
    "one": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "units": ["c"]}}],
    "two": [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
        {"name": "get_time", "arguments": {"tz": "Europe/Paris", "nested": {"b": [1, None]}}},
    ],
    "unicode": [{"name": "lookup", "arguments": {"q": "Zürich 天气 😀", "exact": True, "n": 1.5}}],
}


def vocab_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, added tokens included."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def tokenizer_spec() -> dict[str, Any]:
    """Keyword arguments of `build_tiny_tokenizer` for the golden tokenizer."""
    from tuneforge.templates import all_special_tokens

    extra = sorted({*all_special_tokens(), *LF_ONLY_TOKENS})
    return {"arch": TOKENIZER_ARCH, "vocab_size": TOKENIZER_VOCAB, "extra_special_tokens": extra}


def _dump(obj: Any) -> str:
    # One record per line: diffs stay readable, files stay small.
    if isinstance(obj, dict) and "records" in obj:
        head = {k: v for k, v in obj.items() if k != "records"}
        lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in obj["records"]]
        body = ",\n  ".join(lines)
        head_text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
        return head_text + ',\n "records": [\n  ' + body + "\n ]\n}\n"
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Build the tokenizer, have LLaMA-Factory encode every record, write the goldens."""
    from tuneforge.models.tiny import build_tiny_tokenizer
    from tuneforge.templates import TEMPLATES, TOOL_FORMATS

    from .cases import WEATHER_TOOLS, lf_records

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lf-python", type=Path, default=DEFAULT_LF_PYTHON)
    parser.add_argument("--only", nargs="*", help="rewrite only these templates")
    args = parser.parse_args(argv)
    names = args.only or sorted(TEMPLATES)
    unknown = sorted(set(names) - set(TEMPLATES))
    if unknown:
        parser.error(f"unknown templates: {unknown}")

    spec = tokenizer_spec()
    tokenizer = build_tiny_tokenizer(**spec)
    wrapped = json.dumps([{"type": "function", "function": t} for t in json.loads(WEATHER_TOOLS)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tokenizer"
        tokenizer.save_pretrained(folder)
        job = {
            "tokenizer": str(folder),
            "date": FROZEN_DATE,
            "templates": {name: lf_records(name) for name in names},
            "tool_formats": sorted(TOOL_FORMATS),
            "tools": {"bare": WEATHER_TOOLS, "wrapped": wrapped},
            "calls": TOOL_FORMAT_CALLS,
        }
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
        command = [str(args.lf_python), __file__, "--lf-side", str(job_path), str(out_path)]
        subprocess.run(command, check=True)
        out = json.loads(out_path.read_text(encoding="utf-8"))

    if out["version"] != LF_VERSION:
        sys.exit(f"LLaMA-Factory {out['version']} found; these goldens are for {LF_VERSION}")
    GOLDEN_DIR.mkdir(exist_ok=True)
    meta = {
        "about": "LLaMA-Factory's encodings; rewrite with python -m tests.unit.templates.regen_lf",
        "llamafactory": out["version"],
        "llama3_tool_date": out["date"],
        "tokenizer": spec,
        "vocab_fingerprint": vocab_fingerprint(tokenizer),
    }
    (GOLDEN_DIR / "_meta.json").write_text(_dump(meta), encoding="utf-8")
    (GOLDEN_DIR / "_tool_formats.json").write_text(_dump(out["tool_formats"]), encoding="utf-8")
    for name, golden in out["templates"].items():
        (GOLDEN_DIR / f"{name}.json").write_text(_dump(golden), encoding="utf-8")
    if not args.only:
        wanted = {f"{name}.json" for name in names} | {"_meta.json", "_tool_formats.json"}
        for path in GOLDEN_DIR.glob("*.json"):
            if path.name not in wanted:
                path.unlink()
                print(f"deleted {path}")
    print(f"wrote {len(out['templates'])} template goldens to {GOLDEN_DIR}")


# ---- LLaMA-Factory's side: imports llamafactory only -----------------------------------------


def _import_llamafactory() -> Any:
    """Import llamafactory.data.template without torchaudio (only its audio plugins need it)."""
    import importlib.machinery
    import types

    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torchaudio")
            stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
            sys.modules["torchaudio"] = stub
    import llamafactory.data.template as lf_template

    return lf_template


def _freeze_date(date: list[int]) -> str:
    import datetime as real

    import llamafactory.data.tool_utils as tool_utils

    frozen = real.datetime(date[0], date[1], date[2])

    class FrozenDatetime(real.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> real.datetime:  # type: ignore[override]
            return frozen

    tool_utils.datetime = FrozenDatetime  # type: ignore[misc]
    return frozen.strftime("%d %b %Y")


def _lf_record(template: Any, tokenizer: Any, record: dict[str, Any]) -> dict[str, Any]:
    template.enable_thinking = record["enable_thinking"]
    template.preserve_thinking = record["preserve_thinking"]
    args = (tokenizer, record["messages"], record["system"], record["tools"])
    out: dict[str, Any] = dict(record)
    try:
        out["multiturn"] = [[p, r] for p, r in template.encode_multiturn(*args)]
        if type(template).__name__ != "Template":  # reasoning templates: the other paths too
            out["oneturn"] = list(template.encode_oneturn(*args))
            if not record["preserve_thinking"]:  # SFT with mask_history discards history cot
                pairs = template.encode_multiturn(*args, discarding_history_cot=True)
                out["mask_history"] = [[p, r] for p, r in pairs]
    except Exception as error:  # what LLaMA-Factory refuses, tuneforge must refuse too
        out.pop("multiturn", None)
        out["error"] = f"{type(error).__name__}: {error}"
    return out


def _lf_tool_formats(job: dict[str, Any]) -> dict[str, Any]:
    from llamafactory.data.tool_utils import TOOLS, FunctionCall

    result: dict[str, Any] = {}
    for name in job["tool_formats"]:
        utils = TOOLS[name]
        tools = {kind: utils.tool_formatter(json.loads(t)) for kind, t in job["tools"].items()}
        entry: dict[str, Any] = {"tools": tools, "calls": {}}
        for kind, calls in job["calls"].items():
            functions = [
                FunctionCall(c["name"], json.dumps(c["arguments"], ensure_ascii=False))
                for c in calls
            ]
            try:
                text = utils.function_formatter(functions)
            except Exception as error:
                entry["calls"][kind] = {"error": f"{type(error).__name__}: {error}"}
                continue
            extracted = utils.tool_extractor(text)
            if not isinstance(extracted, str):
                extracted = [[f.name, json.loads(f.arguments)] for f in extracted]
            entry["calls"][kind] = {"text": text, "extracted": extracted}
        result[name] = entry
    return result


def lf_side(job_path: Path, out_path: Path) -> None:
    """Encode every record of the job with LLaMA-Factory; write the results as JSON."""
    import logging
    from types import SimpleNamespace

    import llamafactory
    from transformers import AutoTokenizer

    lf_template = _import_llamafactory()
    logging.disable(logging.WARNING)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    date = _freeze_date(job["date"])
    templates: dict[str, Any] = {}
    for name, records in job["templates"].items():
        tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
        data_args = SimpleNamespace(
            template=name,
            train_on_prompt=False,
            tool_format=None,
            default_system=None,
            enable_thinking=True,
            preserve_thinking=False,
        )
        vocab = tokenizer.get_vocab()
        template = lf_template.get_template_and_fix_tokenizer(tokenizer, data_args)
        added = sorted(set(tokenizer.get_vocab()) - set(vocab))
        if added:  # the ids of tokens LF adds are not the golden tokenizer's: fix the recipe
            sys.exit(f"{name}: LLaMA-Factory added tokens {added}; list them as markers")
        templates[name] = {
            "template": name,
            "lf_class": type(template).__name__,
            "efficient_eos": template.efficient_eos,
            "eos_token_id": tokenizer.eos_token_id,
            "records": [_lf_record(template, tokenizer, record) for record in records],
        }
    out = {
        "version": llamafactory.__version__,
        "date": date,
        "templates": templates,
        "tool_formats": _lf_tool_formats(job),
    }
    out_path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--lf-side":
        lf_side(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
