"""From a config to encoded, cached training and evaluation datasets.

catalogue entry -> rows -> Examples (bad rows refused, or skipped and counted)
-> num_samples / max_samples -> mix -> validation split -> encode -> cache
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.data import cache
from tuneforge.data.catalogue import DatasetSpec, resolve
from tuneforge.data.encode import (
    COLUMNS,
    EncodeOptions,
    EncodeReport,
    Kind,
    Tokenize,
    encode_batch,
    unusable_reason,
)
from tuneforge.data.example import Example
from tuneforge.data.formats import RowError, to_example
from tuneforge.data.mixing import mix, resample, split
from tuneforge.data.sources import Row, read_rows
from tuneforge.errors import DataError
from tuneforge.utils.progress import progress_bar

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

logger = logging.getLogger("tuneforge")

STAGE_KINDS: dict[str, Kind] = {
    "pt": "pretrain",
    "sft": "supervised",
    "rm": "pairwise",
    "dpo": "pairwise",
    "kto": "feedback",
    "ppo": "unsupervised",
}
SHOWN_BAD_ROWS = 3  # examples of skipped rows quoted in the log


@dataclass
class DatasetReport:
    """What happened to the rows of one dataset."""

    name: str
    where: str
    rows: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples_of_skipped: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    """Encoded datasets (datasets.Dataset) and the report of how they were made."""

    train: Any
    eval: Any
    kind: Kind
    eval_kind: Kind
    report: dict[str, Any]


def stage_kinds(stage: str, predict_with_generate: bool) -> tuple[Kind, Kind]:
    """The kinds of encoding a stage trains and evaluates on."""
    kind = STAGE_KINDS[stage]
    return kind, "unsupervised" if stage == "sft" and predict_with_generate else kind


def prepare_data(config: Config, tokenizer: Any, template: Any) -> PreparedData:
    """Loads, mixes, splits and encodes the datasets of `config`, or loads them from cache."""
    data = config.data
    kind, eval_kind = stage_kinds(
        config.finetuning.stage, bool(config.training.get("predict_with_generate"))
    )
    # With tokenized_path, LLaMA-Factory ignores the catalogue when the saved dataset exists.
    specs: dict[str, DatasetSpec] | None = None
    if data.tokenized_path:
        folder = Path(data.tokenized_path)
    else:
        specs = resolve_specs(data)
        folder = _cache_folder(config, kind, eval_kind, tokenizer, template, specs)
    if not data.overwrite_cache and (cached := cache.load(folder)) is not None:
        splits, report = cached
        source = "tokenized_path" if data.tokenized_path else "cache"
        logger.info("Loaded the encoded datasets from %s %s", source, folder)
        report["from_cache"] = str(folder)
        _log_truncation(report, kind, eval_kind, data.cutoff_len)
        return PreparedData(splits.get("train"), splits.get("eval"), kind, eval_kind, report)

    started = time.perf_counter()
    specs = specs or resolve_specs(data)
    train_examples, reports = load_examples(
        [specs[name] for name in data.dataset or []], data, kind, config.seed
    )
    eval_examples: list[Example] = []
    if data.eval_dataset:
        eval_specs = [specs[name] for name in data.eval_dataset]
        eval_examples, eval_reports = load_examples(eval_specs, data, eval_kind, config.seed)
        reports += eval_reports
    elif data.val_size > 0:
        train_examples, eval_examples = split(train_examples, data.val_size, config.seed)
    options = EncodeOptions(
        data.cutoff_len, data.train_on_prompt, data.mask_history, data.enable_thinking
    )
    workers = data.preprocessing_num_workers or 1
    train, train_report = encode(train_examples, kind, template, tokenizer, options, data, workers)
    evaluation, eval_report = encode(
        eval_examples, eval_kind, template, tokenizer, options, data, workers
    )
    report = {
        "datasets": [_plain_report(r) for r in reports],
        "train": _plain_encode(train_report),
        "eval": _plain_encode(eval_report),
        "seconds": round(time.perf_counter() - started, 3),
    }
    splits = {name: ds for name, ds in (("train", train), ("eval", evaluation)) if ds is not None}
    cache.save(folder, splits, report)
    logger.info(
        "Encoded %d training and %d evaluation examples in %.1f s (cached in %s)",
        train_report.encoded,
        eval_report.encoded,
        report["seconds"],
        folder,
    )
    _log_truncation(report, kind, eval_kind, data.cutoff_len)
    saved = cache.load(folder)  # memory-mapped from disk: training does not hold a second copy
    splits = saved[0] if saved else splits
    return PreparedData(splits.get("train"), splits.get("eval"), kind, eval_kind, report)


def resolve_specs(data: Any) -> dict[str, DatasetSpec]:
    """The catalogue entry of every training and evaluation dataset, by name."""
    names = dict.fromkeys([*(data.dataset or []), *(data.eval_dataset or [])])
    return {name: resolve(name, data.dataset_dir) for name in names}


def load_examples(
    specs: Sequence[DatasetSpec], data: Any, kind: Kind, seed: int
) -> tuple[list[Example], list[DatasetReport]]:
    """Reads and converts each dataset, then mixes them."""
    per_dataset, reports = [], []
    for spec in specs:
        rows = read_rows(spec, data.dataset_dir)
        if not rows:
            where = Path(data.dataset_dir) / spec.file_name if spec.file_name else spec.where
            raise DataError(
                f"dataset `{spec.name}`: {where} holds no rows (an empty file, or `[]`); add "
                f"examples to it, or take `{spec.name}` out of the config's datasets."
            )
        examples, report = convert_rows(rows, spec, kind, data.skip_bad_rows)
        if spec.num_samples:
            examples = resample(examples, spec.num_samples, seed)
        if data.max_samples:
            examples = examples[: data.max_samples]
        report.kept = len(examples)
        _log_dataset(report)
        per_dataset.append(examples)
        reports.append(report)
    return mix(per_dataset, data.mix_strategy, data.interleave_probs, seed), reports


def convert_rows(
    rows: list[Row], spec: DatasetSpec, kind: Kind, skip_bad_rows: bool
) -> tuple[list[Example], DatasetReport]:
    """Rows -> Examples usable for `kind`; a bad row fails the run unless skipping is allowed."""
    report = DatasetReport(spec.name, spec.where, rows=len(rows))
    check_columns(rows, spec, kind)
    examples = []
    for row in rows:
        try:
            example = to_example(row, spec)
            reason = unusable_reason(example, kind)
            if reason:
                raise RowError(reason)
        except RowError as error:
            if not skip_bad_rows:
                raise DataError(
                    f"{row.where} (dataset `{spec.name}`): {error}. Fix the row, or set "
                    "`skip_bad_rows: true` to skip such rows (they are counted and reported)."
                ) from None
            report.skipped[str(error)] += 1
            if len(report.examples_of_skipped) < SHOWN_BAD_ROWS:
                report.examples_of_skipped.append(f"{row.where}: {error}")
            continue
        examples.append(example)
    if rows and not examples:
        raise DataError(
            f"dataset `{spec.name}`: every one of its {len(rows)} rows was skipped; "
            f"first problem: {report.examples_of_skipped[0]}."
        )
    return examples, report


def _required_columns(spec: DatasetSpec, kind: Kind) -> dict[str, str | None]:
    columns = spec.columns
    if spec.formatting == "alpaca":
        required = {"prompt": columns.prompt or columns.query}
        if kind in ("supervised", "feedback") and not spec.ranking:
            required["response"] = columns.response
    else:
        required = {"messages": columns.messages}
    if kind == "pairwise":
        required |= {"chosen": columns.chosen, "rejected": columns.rejected}
    if kind == "feedback":
        required["kto_tag"] = columns.kto_tag
    return required


def check_columns(rows: list[Row], spec: DatasetSpec, kind: Kind) -> None:
    """Refuses a dataset whose rows lack a column the stage needs, naming the fix."""
    seen = set().union(*(row.fields for row in rows[:100])) if rows else set()
    for role, column in _required_columns(spec, kind).items():
        if column is None:
            raise DataError(
                f"dataset `{spec.name}`: this stage needs a `{role}` column, and "
                f'dataset_info.json maps none; add "columns": {{"{role}": "<field>"}}.'
            )
        if rows and column not in seen:
            raise DataError(
                f"dataset `{spec.name}` ({spec.where}): no `{column}` field (the `{role}` "
                f"column) in its rows, which have: {', '.join(sorted(seen))}. Map the right "
                f'field with "columns": {{"{role}": "<field>"}} in dataset_info.json.'
            )


def encode(
    examples: list[Example],
    kind: Kind,
    template: Any,
    tokenizer: Any,
    options: EncodeOptions,
    data: Any,
    workers: int = 1,
) -> tuple[Any, EncodeReport]:
    """Encodes `examples` in batches (in `workers` processes) into a datasets.Dataset."""
    import datasets

    report = EncodeReport()
    if not examples:
        return None, report
    size = data.preprocessing_batch_size
    batches = [examples[i : i + size] for i in range(0, len(examples), size)]
    jobs = [(batch, kind, template, tokenizer, options) for batch in batches]
    results = []
    with progress_bar(len(examples), "Encoding", "example") as bar:
        if workers > 1 and len(batches) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for batch, result in zip(batches, pool.map(_encode_job, jobs)):
                    results.append(result)
                    bar.update(len(batch))
        else:
            for batch, job in zip(batches, jobs):
                results.append(_encode_job(job))
                bar.update(len(batch))
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS[kind]}
    for batch_columns, batch_report in results:
        for name, values in batch_columns.items():
            columns[name] += values
        report.merge(batch_report)
    if not report.encoded:
        raise DataError(
            f"no example survived encoding ({dict(report.dropped)}); raise `cutoff_len` "
            f"(now {options.cutoff_len}) or check the data."
        )
    return datasets.Dataset.from_dict(columns, features=_features(kind)), report


def _encode_job(job: tuple) -> tuple[dict[str, list[Any]], EncodeReport]:
    batch, kind, template, tokenizer, options = job
    return encode_batch(batch, kind, template, Tokenize(tokenizer), options)


def _features(kind: Kind) -> Any:
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features(
        {name: datasets.Value("bool") if name == "kto_tag" else ids for name in COLUMNS[kind]}
    )


def _cache_folder(
    config: Config,
    kind: Kind,
    eval_kind: Kind,
    tokenizer: Any,
    template: Any,
    specs: dict[str, DatasetSpec],
) -> Path:
    data = config.data
    paths = [Path(data.dataset_dir) / s.file_name for s in specs.values() if s.file_name]
    parts = {
        "kinds": [kind, eval_kind],
        "datasets": [asdict(spec) for spec in specs.values()],
        "files": cache.file_fingerprints(paths),
        "template": repr(template),
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "data": {k: v for k, v in asdict(data).items() if k not in _NOT_IN_KEY},
        "seed": config.seed,
    }
    root = Path(data.data_cache_dir) if data.data_cache_dir else cache.default_cache_root()
    return root / cache.cache_key(parts)


# Data keys that do not change what is encoded.
_NOT_IN_KEY = {
    "overwrite_cache",
    "preprocessing_batch_size",
    "preprocessing_num_workers",
    "tokenized_path",
    "data_cache_dir",
    "data_shared_file_system",
    "eval_num_beams",
    "packing",
    "neat_packing",
    "buffer_size",
    "streaming",
    "eval_on_each_dataset",
}


def _log_dataset(report: DatasetReport) -> None:
    logger.info("Dataset %s: %d rows, %d examples kept", report.name, report.rows, report.kept)
    if report.skipped:
        logger.warning(
            "Dataset %s: skipped %d bad rows (%s); e.g. %s",
            report.name,
            sum(report.skipped.values()),
            "; ".join(f"{n} x {why}" for why, n in report.skipped.most_common()),
            " | ".join(report.examples_of_skipped),
        )


def _plain_report(report: DatasetReport) -> dict[str, Any]:
    return {**asdict(report), "skipped": dict(report.skipped)}


def _plain_encode(report: EncodeReport) -> dict[str, Any]:
    return {
        "encoded": report.encoded,
        "truncated": report.truncated,
        "dropped": dict(report.dropped),
        "tokens_cut": report.tokens_cut,
        "largest_cut": report.largest_cut,
        "longest_dropped": report.longest_dropped,
    }


def truncation_summary(
    name: str, report: Mapping[str, Any], kind: Kind, cutoff_len: int
) -> str | None:
    """One line on what cutoff_len did to a split's examples (from its plain encode report):
    how many were cut and by how many tokens, in all and at most, and how many were dropped;
    None when every example fitted."""
    truncated = report.get("truncated", 0)
    dropped = sum(report.get("dropped", {}).values())
    if not truncated and not dropped:
        return None
    total = report.get("encoded", 0) + dropped
    if kind == "pretrain":  # a long document becomes several chunks: nothing is lost
        return (
            f"{name} data: {truncated:,} of {total:,} documents are longer than cutoff_len "
            f"{cutoff_len} and were split into chunks of {cutoff_len} tokens (no token lost)."
        )
    parts = []
    if truncated:
        parts.append(
            f"{truncated:,} of {total:,} examples were cut to cutoff_len {cutoff_len}, losing "
            f"{report.get('tokens_cut', 0):,} tokens in all and at most "
            f"{report.get('largest_cut', 0):,} from one example"
        )
    if dropped:
        reasons = ", ".join(f"{n:,} {why}" for why, n in report.get("dropped", {}).items())
        longest = report.get("longest_dropped", 0)
        size = f", the longest of {longest:,} tokens" if longest else ""
        parts.append(
            f"{dropped:,} of {total:,} examples were dropped, as even cut they would not fit "
            f"({reasons}{size})"
        )
    return f"{name} data: {'; '.join(parts)}. Raise `cutoff_len` to keep more of them."


def _log_truncation(
    report: Mapping[str, Any], kind: Kind, eval_kind: Kind, cutoff_len: int
) -> None:
    for name, split_kind, key in (("Training", kind, "train"), ("Evaluation", eval_kind, "eval")):
        line = truncation_summary(name, report.get(key) or {}, split_kind, cutoff_len)
        if line:
            (logger.info if split_kind == "pretrain" else logger.warning)(line)
