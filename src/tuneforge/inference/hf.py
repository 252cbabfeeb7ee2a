"""The Hugging Face engine: transformers' `generate` on the config's model and adapters.

Adapters (`adapter_name_or_path`, several allowed) are merged into the base weights in order,
as LLaMA-Factory does for inference; a quantized base keeps its single adapter unmerged. One
lock serialises generation, so concurrent requests never share a `generate` call; a streamed
request holds it until its iterator ends or is closed.

Stopping: the template's stop words are token ids (the model's generation EOS, set by
`models.loader`); extra `stop` strings are matched in the decoded text by a stopping criterion
and cut from the answer by `TextAssembler`.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tuneforge.adapters.lora import load_adapter
from tuneforge.errors import ConfigError, DataError
from tuneforge.inference.engine import Engine, Response
from tuneforge.inference.generation import GenerationSettings, TextAssembler, assemble
from tuneforge.models.loader import device_type, load_model
from tuneforge.models.tokenizer import base_model_path, load_tokenizer_and_template

if TYPE_CHECKING:
    from tuneforge.config.loader import Config
    from tuneforge.config.model import ModelConfig

logger = logging.getLogger("tuneforge")
# LLaMA-Factory writes the .bin when save_safetensors is off
SCORE_BATCH = 8


class HuggingFaceEngine(Engine):
    """An Engine on a transformers model (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
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
        self._lock = threading.Lock()

    # ---- answers ----------------------------------------------------------------------

    def _answers(self, prompt_ids: list[int], settings: GenerationSettings) -> list[Response]:
        budget = settings.token_budget(len(prompt_ids))
        with self._lock:
            rows = self._generate(prompt_ids, settings, budget)
        return [self._response(row, len(prompt_ids), settings) for row in rows]

    def _generate(
        self, prompt_ids: list[int], settings: GenerationSettings, budget: int
    ) -> list[list[int]]:
        """The new token ids of each answer (rows may end with stop and pad tokens)."""
        inputs = torch.tensor([prompt_ids], device=self.model.device)
        kwargs = self._generate_kwargs(settings, budget)
        if settings.num_beams > 1:
            kwargs["num_return_sequences"] = settings.num_return_sequences
        else:  # n independent answers: the prompt n times in one batch (greedy included)
            inputs = inputs.expand(settings.num_return_sequences, -1)
        criteria = TextStopCriteria(self.tokenizer, len(prompt_ids), settings)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                stopping_criteria=StoppingCriteriaList([criteria]),
                **kwargs,
            )
        return output[:, len(prompt_ids) :].tolist()

    def _generate_kwargs(self, settings: GenerationSettings, budget: int) -> dict[str, Any]:
        kwargs = {
            "do_sample": settings.do_sample,
            "num_beams": settings.num_beams,
            "repetition_penalty": settings.repetition_penalty,
            "length_penalty": settings.length_penalty,
            "max_new_tokens": budget,
        }
        if settings.do_sample:
            kwargs |= {
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "top_k": settings.top_k,
            }
        return kwargs

    def _response(self, row: list[int], prompt_tokens: int, settings: Any) -> Response:
        ids, hit_stop_token = self._until_stop_token(row)
        text, used, hit_stop_string = assemble(self.tokenizer, ids, settings)
        if hit_stop_string:
            return Response(text, prompt_tokens, used, "stop")
        if hit_stop_token:
            return Response(text, prompt_tokens, len(ids) + 1, "stop")
        return Response(text, prompt_tokens, len(ids), "length")

    def _until_stop_token(self, row: list[int]) -> tuple[list[int], bool]:
        for index, token in enumerate(row):
            if token in self.stop_ids:
                return row[:index], True
        return row, False

    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings
    ) -> Generator[str, None, Response]:
        budget = settings.token_budget(len(prompt_ids))
        with self._lock:
            if settings.num_beams > 1:  # transformers cannot stream beam search: one piece
                row = self._generate(prompt_ids, settings, budget)[0]
                response = self._response(row, len(prompt_ids), settings)
                yield response.text
                return response
            tokens = TokenQueue()
            criteria = TextStopCriteria(self.tokenizer, len(prompt_ids), settings)
            inputs = torch.tensor([prompt_ids], device=self.model.device)
            worker = threading.Thread(
                target=self._generate_into,
                args=(tokens, inputs, self._generate_kwargs(settings, budget), criteria),
                daemon=True,
            )
            worker.start()
            assembler = TextAssembler(self.tokenizer, settings.stop, settings.skip_special_tokens)
            try:
                hit_stop_token = False
                for token in tokens:
                    if token in self.stop_ids:
                        hit_stop_token = True
                        break
                    if piece := assembler.add(token):
                        yield piece
                    if assembler.stopped:
                        break
                if piece := assembler.finish():
                    yield piece
                used = len(assembler.ids) + hit_stop_token  # the stop token counts, as in chat()
                reason: Literal["stop", "length"] = (
                    "stop" if assembler.stopped or hit_stop_token else "length"
                )
                return Response(assembler.text, len(prompt_ids), used, reason)
            finally:  # also when the caller stops reading (GeneratorExit) or presses Ctrl-C
                criteria.cancel.set()
                worker.join()

    def _generate_into(
        self, tokens: TokenQueue, inputs: torch.Tensor, kwargs: dict, criteria: Any
    ) -> None:
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=inputs,
                    attention_mask=torch.ones_like(inputs),
                    stopping_criteria=StoppingCriteriaList([criteria]),
                    streamer=tokens,
                    **kwargs,
                )
        except BaseException as error:  # handed to the reading thread, which raises it
            tokens.fail(error)

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
        scores: list[float] = []
        with self._lock:
            for start in range(0, len(encoded), SCORE_BATCH):
                scores += self._score_batch(encoded[start : start + SCORE_BATCH])
        return scores

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
        return values.float().tolist()

    def close(self) -> None:
        with self._lock:
            self.model = None
            self.value_head = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class TokenQueue(BaseStreamer):
    """A streamer that hands generated token ids to another thread, in order."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(token)

    def end(self) -> None:
        self._queue.put(self._END)

    def fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def __iter__(self) -> Iterator[int]:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


class TextStopCriteria(StoppingCriteria):
    """Stops a row once its decoded answer holds a stop string, and every row on `cancel`."""

    def __init__(self, tokenizer: Any, prompt_length: int, settings: GenerationSettings) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = settings.stop
        self.skip_special_tokens = settings.skip_special_tokens
        self.cancel = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        rows = input_ids.shape[0]
        if self.cancel.is_set():
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_length :], skip_special_tokens=self.skip_special_tokens
        )
        done = [any(word in text for word in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
