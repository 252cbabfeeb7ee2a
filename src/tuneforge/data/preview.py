"""`tuneforge data preview`: encoded examples as text with the trained spans marked, and
statistics of the encoded dataset. This is how a user checks a template and a cutoff before
spending GPU hours."""

from __future__ import annotations

from typing import Any

from tuneforge.data.encode import IGNORE_INDEX, Kind

OPEN, CLOSE = "⟦", "⟧"  # around trained tokens


def marked_text(ids: list[int], trained: list[bool], tokenizer: Any) -> str:
    """Decodes `ids`, wrapping each run of trained tokens in ⟦ ⟧."""
    pieces, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or trained[end] != trained[start]:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            pieces.append(f"{OPEN}{text}{CLOSE}" if trained[start] else text)
            start = end
    return "".join(pieces)


def shown_tokens(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[bool]]:
    """The tokens of a supervised row to show, and whether each is trained.

    A position trained on another token than its input (the eos that an `efficient_eos`
    template trains in place of the next prompt's first token) shows the trained token, then
    the input token untrained: the response reads as what the model learns to write.
    """
    ids: list[int] = []
    trained: list[bool] = []
    for token, label in zip(input_ids, labels):
        if label not in (IGNORE_INDEX, token):
            ids.append(label)
            trained.append(True)
        ids.append(token)
        trained.append(label == token)
    return ids, trained


def render_row(row: dict[str, Any], kind: Kind, tokenizer: Any) -> str:
    """One encoded example, as a user should read it."""
    if kind == "supervised":
        return marked_text(*shown_tokens(row["input_ids"], row["labels"]), tokenizer)
    if kind == "pretrain":
        return marked_text(row["input_ids"], [True] * len(row["input_ids"]), tokenizer)
    if kind == "unsupervised":
        prompt = tokenizer.decode(row["input_ids"], skip_special_tokens=False)
        label = tokenizer.decode(row["label_ids"], skip_special_tokens=False)
        return f"{prompt}\n[reference answer] {label}"
    prompt = tokenizer.decode(row["prompt_ids"], skip_special_tokens=False)
    if kind == "pairwise":
        chosen = marked_text(row["chosen_ids"], [True] * len(row["chosen_ids"]), tokenizer)
        rejected = marked_text(row["rejected_ids"], [True] * len(row["rejected_ids"]), tokenizer)
        return f"{prompt}\n[chosen]   {chosen}\n[rejected] {rejected}"
    response = marked_text(row["response_ids"], [True] * len(row["response_ids"]), tokenizer)
    verdict = "desirable" if row["kto_tag"] else "undesirable"
    return f"{prompt}\n[{verdict}] {response}"


def statistics(dataset: Any, kind: Kind) -> dict[str, Any]:
    """Examples, tokens, trained tokens and length percentiles of an encoded dataset."""
    import numpy as np
    import pyarrow.compute as pc

    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data

    def lengths(name: str):
        return np.asarray(pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False))

    if kind in ("supervised", "pretrain", "unsupervised"):
        length = lengths("input_ids")
    elif kind == "pairwise":
        length = lengths("prompt_ids") + np.maximum(lengths("chosen_ids"), lengths("rejected_ids"))
    else:
        length = lengths("prompt_ids") + lengths("response_ids")
    if kind == "supervised":
        flat = pc.list_flatten(table.column("labels"))
        trained = int(pc.sum(pc.not_equal(flat, IGNORE_INDEX)).as_py() or 0)
    elif kind == "pretrain":
        trained = int(length.sum())
    elif kind == "pairwise":
        trained = int(lengths("chosen_ids").sum() + lengths("rejected_ids").sum())
    elif kind == "feedback":
        trained = int(lengths("response_ids").sum())
    else:
        trained = 0
    percentiles = np.percentile(length, [50, 90, 99]) if len(length) else [0, 0, 0]
    return {
        "examples": len(length),
        "tokens": int(length.sum()),
        "trained_tokens": trained,
        "length_min": int(length.min()) if len(length) else 0,
        "length_p50": int(percentiles[0]),
        "length_p90": int(percentiles[1]),
        "length_p99": int(percentiles[2]),
        "length_max": int(length.max()) if len(length) else 0,
    }


def format_statistics(name: str, stats: dict[str, Any], encode_report: dict[str, Any]) -> str:
    share = stats["trained_tokens"] / stats["tokens"] if stats["tokens"] else 0.0
    dropped = sum(encode_report.get("dropped", {}).values())
    cut = encode_report.get("tokens_cut", 0)
    cut_note = (
        f" ({cut:,} tokens cut, at most {encode_report.get('largest_cut', 0):,} from one)"
        if cut
        else ""
    )
    return "\n".join(
        [
            f"{name}: {stats['examples']:,} examples, {encode_report.get('truncated', 0):,} "
            f"truncated{cut_note}, {dropped:,} dropped (too long)",
            f"  tokens: {stats['tokens']:,}, trained: {stats['trained_tokens']:,} ({share:.1%})",
            f"  length: min {stats['length_min']}, p50 {stats['length_p50']}, "
            f"p90 {stats['length_p90']}, p99 {stats['length_p99']}, max {stats['length_max']}",
        ]
    )


def format_datasets(report: dict[str, Any]) -> str:
    lines = []
    for entry in report.get("datasets", []):
        skipped = sum(entry["skipped"].values())
        line = f"dataset {entry['name']} ({entry['where']}): {entry['rows']:,} rows, "
        line += f"{entry['kept']:,} examples kept"
        if skipped:
            reasons = "; ".join(f"{n} x {why}" for why, n in entry["skipped"].items())
            line += f", {skipped:,} bad rows skipped ({reasons})"
        lines.append(line)
    return "\n".join(lines)
