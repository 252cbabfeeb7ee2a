"""Rewrite the LLaMA-Factory encodings that `test_efficient_eos.py` compares with.

Run from the repository root, with LLaMA-Factory installed in a second virtualenv::

    .venv/bin/python -m tests.unit.lf_encodings.regen [--lf-python PATH]

It builds the tiny tokenizer the test builds (fixed special tokens, so that templates added
to the registry later do not move its ids), fits it to glm4 as training does
(`fit_tokenizer_to_template`) and saves it. LLaMA-Factory's own python then loads that folder
and encodes the conversations below with its supervised and pairwise processors; what it
returns is written to `glm4.json`. The test needs neither LLaMA-Factory nor this script.

The same file is LLaMA-Factory's side when started with `--lf-side FOLDER`: that part imports
llamafactory only, never tuneforge.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("glm4.json")
DEFAULT_LF_PYTHON = Path("~/.cache/tuneforge-peer/venv/bin/python").expanduser()
TEMPLATE = "glm4"
# The real GLM-4 tokenizer has these as special tokens.
SPECIAL_TOKENS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
TOKENIZER = {"arch": "qwen2", "vocab_size": 4096, "extra_special_tokens": SPECIAL_TOKENS}

WEATHER_TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        }
    ]
)


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# A tool call that is not the last turn, an answer after the tool result, then a follow-up.
SUPERVISED: list[dict[str, Any]] = [
    {
        "system": "You can look up the weather.",
        "tools": WEATHER_TOOLS,
        "messages": [
            _m("user", "What's the weather in Paris?"),
            _m("function", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
            _m("observation", '{"temperature": 18, "condition": "sunny"}'),
            _m("assistant", "It is sunny and 18 degrees in Paris."),
            _m("user", "And should I take an umbrella?"),
            _m("assistant", "No, it is not going to rain."),
        ],
    },
    {
        "system": "",
        "tools": "",
        "messages": [
            _m("user", "What is 2+2?"),
            _m("assistant", "4"),
            _m("user", "And 3+3?"),
            _m("assistant", "6"),
            _m("user", "Thanks!"),
            _m("assistant", "You are welcome."),
        ],
    },
]
# Preference pairs: only the last response is trained, and it must end with the eos too.
PAIRWISE: list[dict[str, Any]] = [
    {
        "system": "Answer briefly.",
        "tools": "",
        "messages": [
            _m("user", "What is 2+2?"),
            _m("assistant", "4"),
            _m("user", "And 3+3?"),
        ],
        "chosen": "6",
        "rejected": "Seven, I think.",
    }
]


def _fitted_tokenizer(folder: Path) -> None:
    """Saves the tiny tokenizer fitted to the template, as `load_tokenizer_and_template` fits."""
    from tuneforge.models.tiny import build_tiny_tokenizer
    from tuneforge.models.tokenizer import fit_tokenizer_to_template
    from tuneforge.templates import get_template

    tokenizer = build_tiny_tokenizer(**TOKENIZER)
    template = get_template(TEMPLATE, tokenizer)
    fit_tokenizer_to_template(tokenizer, template.stop_words, template.replace_eos)
    tokenizer.save_pretrained(folder)


def _one_line(numbers: str) -> str:
    return re.sub(r"\s+", " ", numbers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lf-python", type=Path, default=DEFAULT_LF_PYTHON)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _fitted_tokenizer(folder)
        out = folder / "lf.json"
        subprocess.run(
            [str(args.lf_python), __file__, "--lf-side", str(folder), str(out)], check=True
        )
        lf = json.loads(out.read_text(encoding="utf-8"))
    golden = {
        "about": "LLaMA-Factory's encodings; rewrite with: python -m tests.unit.lf_encodings.regen",
        "llamafactory": lf["version"],
        "template": TEMPLATE,
        "tokenizer": TOKENIZER,
        "supervised": [{**c, **e} for c, e in zip(SUPERVISED, lf["supervised"])],
        "pairwise": [{**c, **e} for c, e in zip(PAIRWISE, lf["pairwise"])],
    }
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    # one line per id list, so that a diff shows which sequence changed
    text = re.sub(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]", lambda m: f"[{_one_line(m[1])}]", text)
    GOLDEN.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")


# ---- LLaMA-Factory's side (its own python; imports llamafactory only) ---------------------


def _lf_columns(conversations: list[dict[str, Any]], pairwise: bool) -> dict[str, list[Any]]:
    """The `_prompt`/`_response`/... columns LLaMA-Factory's processors read."""
    columns: dict[str, list[Any]] = {
        name: [] for name in ("_prompt", "_response", "_system", "_tools", "_images")
    }
    for conversation in conversations:
        messages = conversation["messages"]
        if pairwise:
            prompt = messages
            response = [_m("assistant", conversation[key]) for key in ("chosen", "rejected")]
        else:
            prompt, response = messages[:-1], messages[-1:]
        columns["_prompt"].append(prompt)
        columns["_response"].append(response)
        columns["_system"].append(conversation["system"])
        columns["_tools"].append(conversation["tools"])
        columns["_images"].append(None)
    columns["_videos"] = columns["_audios"] = columns["_images"]
    return columns


def lf_side(folder: Path, out: Path) -> None:
    import importlib.machinery
    import importlib.util
    import types

    # llamafactory.data imports torchaudio for audio inputs, which its venv may lack: text
    # encoding never touches it. (transformers reads the stub's spec, and finds no version.)
    if importlib.util.find_spec("torchaudio") is None:
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
    import llamafactory
    from llamafactory.data.processor import PairwiseDatasetProcessor, SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data_args = DataArguments(template=TEMPLATE, cutoff_len=4096)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    supervised = SupervisedDatasetProcessor(template, tokenizer, None, data_args)
    pairwise = PairwiseDatasetProcessor(template, tokenizer, None, data_args)
    sft = supervised.preprocess_dataset(_lf_columns(SUPERVISED, pairwise=False))
    pairs = pairwise.preprocess_dataset(_lf_columns(PAIRWISE, pairwise=True))
    keys = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
    result = {
        "version": llamafactory.__version__,
        "supervised": [
            {"input_ids": ids, "labels": labels}
            for ids, labels in zip(sft["input_ids"], sft["labels"])
        ],
        "pairwise": [dict(zip(keys, row)) for row in zip(*(pairs[key] for key in keys))],
    }
    out.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--lf-side":
        lf_side(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
