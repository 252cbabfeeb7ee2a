"""`tuneforge data preview CONFIG [-n N] [key=value ...]`: encoded examples with the
trained spans marked, and statistics of the encoded datasets."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    preview = actions.add_parser(
        "preview",
        help="show encoded examples (trained spans in ⟦ ⟧) and dataset statistics",
        description="Encode the config's datasets as training would and show N examples "
        "with the trained tokens marked ⟦like this⟧, plus statistics.",
    )
    preview.add_argument("config", help="YAML config file (LLaMA-Factory keys)")
    preview.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    preview.add_argument("-n", "--num", type=int, default=3, help="examples to show (default 3)")
    preview.add_argument(
        "--split", choices=("train", "eval"), default="train", help="which split to show"
    )


def run(args: argparse.Namespace) -> int:
    from tuneforge.config.loader import load_config
    from tuneforge.data.pipeline import prepare_data
    from tuneforge.data.preview import format_datasets, format_statistics, render_row, statistics
    from tuneforge.errors import DataError
    from tuneforge.models.tokenizer import load_tokenizer_and_template
    from tuneforge.utils.logs import setup_logging

    setup_logging()
    config = load_config(args.config, args.overrides)
    if not config.data.dataset and not config.data.eval_dataset:
        raise DataError("the config names no `dataset` to preview.")
    # Training's own path: the tokenizer fitted to the template (stop words made tokens, the
    # EOS maybe replaced) encodes, and caches, exactly what training will see.
    tokenizer, template = load_tokenizer_and_template(config)
    prepared = prepare_data(config, tokenizer, template)
    print(format_datasets(prepared.report))
    if "from_cache" in prepared.report:
        print(f"(encoded datasets loaded from cache {prepared.report['from_cache']})")
    splits = {"train": (prepared.train, prepared.kind), "eval": (prepared.eval, prepared.eval_kind)}
    for name, (dataset, kind) in splits.items():
        if dataset is not None:
            print(
                format_statistics(
                    f"{name} ({kind})", statistics(dataset, kind), prepared.report.get(name, {})
                )
            )
    dataset, kind = splits[args.split]
    if dataset is None:
        raise DataError(f"there is no {args.split} split to show.")
    print(f"\nTemplate `{template.name}`; trained tokens are marked ⟦like this⟧.")
    for index in range(min(args.num, len(dataset))):
        print(f"\n--- {args.split} example {index + 1} of {len(dataset)} ---")
        print(render_row(dataset[index], kind, tokenizer))
    return 0
