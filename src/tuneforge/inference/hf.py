"""The Hugging Face engine: the config's model and adapters, decoded by one worker thread.

Adapters (`adapter_name_or_path`, several allowed) are merged into the base weights in order,
as LLaMA-Factory does for inference; a quantized base keeps its single adapter unmerged. The
model belongs to a `Scheduler` (inference/scheduler.py): one thread that decodes the waiting
requests together in batches and also computes reward scores, so no two threads ever use the
model at once and no caller waits on a lock.

Stopping: the template's stop words are token ids (the model's generation EOS, set by
`models.loader`); extra `stop` strings are matched in the decoded text and cut from the answer
by `TextAssembler`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from tuneforge.adapters.lora import load_adapter
from tuneforge.errors import ConfigError, DataError
from tuneforge.inference.engine import Engine, Limits, Listener, Prompt, Ticket
from tuneforge.inference.generation import GenerationSettings
from tuneforge.inference.scheduler import Scheduler, can_batch, generate_rows
from tuneforge.models.families import training_path
from tuneforge.models.loader import device_type, load_model
from tuneforge.models.tokenizer import base_model_path, load_tokenizer_and_template

if TYPE_CHECKING:
    from tuneforge.config.loader import Config
    from tuneforge.config.model import ModelConfig

logger = logging.getLogger("tuneforge")
SCORE_BATCH = 8


class HuggingFaceEngine(Engine):
    """An Engine on a transformers model (see the module docstring)."""

    def __init__(self, config: Config, limits: Limits | None = None) -> None:
        super().__init__(config, limits)
        self.tokenizer, self.template = load_tokenizer_and_template(config)
        model = load_model(config.model, self.tokenizer, self.template.stop_words)
        model = merge_adapters(model, config.model)
        if not getattr(model, "hf_device_map", None):  # quantized models are placed already
            model = model.to(device_type())
        model.generation_config.use_cache = config.model.use_kv_cache
        self.model = model
        eos = model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self.value_head = find_value_head(config.model, model)
        self.is_reward_model = self.value_head is not None
        family = training_path(model.config, config.model.trust_remote_code)
        batched = can_batch(model, family.padding_free, config.model.use_kv_cache)
        logger.info(
            "Generation: %s.",
            "requests decode together in batches"
            if batched
            else f"one request at a time ({family.reason}"
            + ("" if config.model.use_kv_cache else ", use_kv_cache: false")
            + ")",
        )
        text_config = model.config.get_text_config()
        self._context = getattr(text_config, "max_position_embeddings", None)
        self.scheduler = Scheduler(model, self.tokenizer, self.stop_ids, self.capacity, batched)

    @property
    def context_length(self) -> int | None:
        return self._context

    def submit(self, prompt: Prompt, listener: Listener) -> Ticket:
        return self.scheduler.submit(prompt, listener)

    def drain(self) -> None:
        self.scheduler.drain()

    def _generate(
        self, prompt_ids: list[int], settings: GenerationSettings, budget: int
    ) -> list[list[int]]:
        """transformers' own `generate` on one prompt (the reference the batched decoding is
        checked against; rows may end with stop and pad tokens). Not for use while serving."""
        return generate_rows(self.model, prompt_ids, settings, budget)

    # ---- reward scores ----------------------------------------------------------------

    def get_scores(self, texts: Sequence[str], **kwargs: Any) -> list[float]:
        """The value head's score at the last token of each text (tokenized as is, without
        special tokens added). `max_length` refuses texts longer than that many tokens."""
        if self.value_head is None:
            return super().get_scores(texts)
        max_length = kwargs.pop("max_length", None)
        if kwargs:
            raise ConfigError(f"get_scores takes only `max_length`, got {', '.join(kwargs)}.")
        encoded = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        for index, ids in enumerate(encoded):
            if not ids:
                raise DataError(f"text {index} to score is empty.")
            if max_length and len(ids) > max_length:
                raise DataError(
                    f"text {index} to score has {len(ids)} tokens, over max_length {max_length}."
                )

        def score_all() -> list[float]:
            scores: list[float] = []
            for start in range(0, len(encoded), SCORE_BATCH):
                scores += self._score_batch(encoded[start : start + SCORE_BATCH])
            return scores

        return self.scheduler.call(score_all).result()  # on the model's own thread

    def _score_batch(self, batch: list[list[int]]) -> list[float]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        device = self.model.device
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
        last = torch.tensor([len(ids) - 1 for ids in batch], device=device)
        with torch.inference_mode():
            output = self.model(
                input_ids=input_ids,
                attention_mask=mask.to(device),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=False,
            )
            hidden = output.hidden_states[-1][torch.arange(len(batch), device=device), last]
            values = self.value_head(hidden)
        scores: list[float] = values.float().tolist()
        return scores

    def close(self) -> None:
        self.scheduler.close()
        self.scheduler.model = None
        self.model = None
        self.value_head = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def merge_adapters(model: Any, model_config: ModelConfig) -> Any:
    """`model` with the LoRA adapters of `adapter_name_or_path` merged in, in order.

    A quantized base cannot take merged weights: its (single) adapter stays a PeftModel.
    """
    paths = list(model_config.adapter_name_or_path or [])
    for index, path in enumerate(paths):
        model = load_adapter(model, path, subfolder=model_config.adapter_folder)
        if model_config.quantization_bit is None or index < len(paths) - 1:
            model = model.merge_and_unload()
        logger.info("Loaded adapter %s.", path)
    return model.eval()


def find_value_head(model_config: ModelConfig, model: Any) -> Any:
    """The reward model's value head (see models/value_head.py), from the last adapter's
    folder or the model's; None for a plain language model."""
    from tuneforge.models.value_head import load_value_head

    folders = [*(model_config.adapter_name_or_path or [])[-1:], base_model_path(model_config)]
    hidden = model.config.get_text_config().hidden_size
    for folder in folders:
        head = load_value_head(folder, hidden)
        if head is not None:
            logger.info("Loaded the value head from %s: this model scores texts.", folder)
            return head.to(device=model.device, dtype=model.dtype).requires_grad_(False).eval()
    return None
