"""The README's main job: a real fine-tune, offline, on CPU, in a minute or two.

It builds the tiny model, fills the demo identity dataset's {{name}} and {{author}}, asks the
untrained model "Who are you?", trains it with `examples/demo_identity.yaml` through the same
code path as `tuneforge train`, and asks again.

    python -m tuneforge.demo [--config examples/demo_identity.yaml]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

NAME, AUTHOR = "Forge", "the tuneforge team"
QUESTION = "Who are you?"


def fill_identity(source: Path, target_dir: Path) -> None:
    """Copies identity.json with its placeholders filled, and a catalogue naming it."""
    text = source.read_text(encoding="utf-8").replace("{{name}}", NAME)
    text = text.replace("{{author}}", AUTHOR)
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "identity.json").write_text(text, encoding="utf-8")
    catalogue = {"identity": {"file_name": "identity.json"}}
    (target_dir / "dataset_info.json").write_text(json.dumps(catalogue, indent=2))


def answer(model_path: str, config, question: str) -> str:
    """The model's greedy answer, rendered through the config's template."""
    import torch

    from tuneforge.data.example import Message
    from tuneforge.models.loader import load_model
    from tuneforge.models.tokenizer import load_tokenizer_and_template

    config = replace(config, model=replace(config.model, model_name_or_path=model_path))
    tokenizer, template = load_tokenizer_and_template(config)
    model = load_model(config.model, tokenizer, template.stop_words)
    prompt = template.render_prompt([Message("user", question)])
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        output = model.generate(ids, max_new_tokens=60, do_sample=False)
    # special tokens stay visible: an untrained model often answers with nothing else
    text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=False)
    return repr(text.split(template.stop_words[0])[0].strip() or text[:80])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/demo_identity.yaml")
    args = parser.parse_args(argv)

    from tuneforge.config.loader import load_config
    from tuneforge.errors import EXIT_USER_ERROR, ConfigError, UserError
    from tuneforge.models.tiny import build_tiny_model
    from tuneforge.stages import run_stage
    from tuneforge.utils.logs import setup_logging

    setup_logging()
    try:
        config = load_config(args.config)
        base = config.model.model_name_or_path
        if base is None:  # the tiny model is built where the config points
            raise ConfigError(f"{args.config} sets no `model_name_or_path`.")
        if not Path(base, "config.json").exists():
            build_tiny_model(base, arch="qwen2", size="tiny")
        fill_identity(Path("data/identity.json"), Path(config.data.dataset_dir))
        before = answer(base, config, QUESTION)
        output_dir = Path(config.training["output_dir"])
        shutil.rmtree(output_dir, ignore_errors=True)
        if run_stage(config) != 0:
            return 1
        after = answer(str(output_dir), config, QUESTION)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"\n{QUESTION}\n  before training: {before}\n  after training:  {after}")
    print(f"\nLoss curve: {output_dir / 'training_loss.png'}; log: {output_dir}/trainer_log.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
