"""`do_predict` with `predict_with_generate`: generate an answer for each evaluation prompt,
write generated_predictions.jsonl (prompt, predict, label) and BLEU-4 / ROUGE scores."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from tuneforge.utils.progress import progress_bar

logger = logging.getLogger("tuneforge")
PREDICTIONS_FILE = "generated_predictions.jsonl"


def generation_kwargs(generation: Any) -> dict[str, Any]:
    """transformers generate() arguments from the config's generation keys (LLaMA-Factory's
    rule: max_new_tokens wins over max_length when positive)."""
    kwargs = {
        "do_sample": generation.do_sample,
        "num_beams": generation.num_beams,
        "repetition_penalty": generation.repetition_penalty,
        "length_penalty": generation.length_penalty,
    }
    if generation.do_sample:
        kwargs |= {
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "top_k": generation.top_k,
        }
    if generation.max_new_tokens > 0:
        kwargs["max_new_tokens"] = generation.max_new_tokens
    else:
        kwargs["max_length"] = generation.max_length
    return kwargs


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], kwargs: dict) -> list:
    """New token ids for each prompt, generated as one left-padded batch."""
    longest = max(len(ids) for ids in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in prompts])
    mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts])
    device = next(model.parameters()).device
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
        )
    return output[:, longest:].tolist()


def predict(trainer: Any, dataset: Any, tokenizer: Any, generation: Any) -> dict[str, float]:
    """Generates for every prompt of `dataset` (input_ids, label_ids) on the main process."""
    from tuneforge.evaluation.metrics import similarity_scores

    args = trainer.args
    if not trainer.accelerator.is_main_process:
        trainer.accelerator.wait_for_everyone()
        return {}
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    model.config.use_cache = True
    kwargs = generation_kwargs(generation)
    stop_ids = model.generation_config.eos_token_id
    size = args.per_device_eval_batch_size
    records = []
    bar = progress_bar(len(dataset), "Predicting", "example", disable=args.disable_tqdm)
    for start in range(0, len(dataset), size):
        rows = dataset[start : start + size]
        outputs = generate_batch(model, tokenizer, rows["input_ids"], kwargs)
        bar.update(len(outputs))
        for prompt, label, output in zip(rows["input_ids"], rows["label_ids"], outputs):
            output = _until_stop(output, stop_ids, tokenizer.pad_token_id)
            skip = generation.skip_special_tokens
            records.append(
                {
                    "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                    "predict": tokenizer.decode(output, skip_special_tokens=skip),
                    "label": tokenizer.decode(label, skip_special_tokens=skip),
                }
            )
    bar.close()
    path = Path(args.output_dir) / PREDICTIONS_FILE
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("Wrote %d predictions to %s", len(records), path)
    trainer.accelerator.wait_for_everyone()
    return similarity_scores([r["predict"] for r in records], [r["label"] for r in records])


def _until_stop(ids: list[int], stop_ids: Any, pad_id: int | None) -> list[int]:
    stops = set(stop_ids if isinstance(stop_ids, list) else [stop_ids]) | {pad_id}
    for index, token in enumerate(ids):
        if token in stops:
            return ids[:index]
    return ids
