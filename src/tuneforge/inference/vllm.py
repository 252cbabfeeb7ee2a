"""The vLLM engine (`infer_backend: vllm`), for fast serving on CUDA GPUs.

vLLM's `AsyncLLMEngine` runs on an asyncio loop in a background thread; the synchronous Engine
methods submit coroutines to it, so concurrent callers are batched by vLLM itself. Prompts are
rendered and tokenized by tuneforge (the same text as training) and passed as token ids; the
template's stop words are passed as stop token ids, extra `stop` strings as vLLM stop strings.
A LoRA adapter is served through vLLM's LoRA support (`enable_lora`, `vllm_max_lora_rank`).
Keys: vllm_maxlen, vllm_gpu_util, vllm_enforce_eager, vllm_max_lora_rank, and vllm_config for
any other AsyncEngineArgs field.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError, NotAvailableError
from tuneforge.inference.engine import Engine, Response
from tuneforge.inference.generation import GenerationSettings
from tuneforge.models.tokenizer import load_tokenizer_and_template

if TYPE_CHECKING:
    from tuneforge.config.loader import Config

_END = object()


def import_vllm() -> Any:
    """The vllm module, or a NotAvailableError naming the extra that installs it."""
    try:
        import vllm
    except ImportError:
        raise NotAvailableError(
            "`infer_backend: vllm` needs vLLM, which is not installed: "
            "pip install 'tuneforge[vllm]' (Linux with a CUDA GPU), or use "
            "`infer_backend: huggingface`."
        ) from None
    return vllm


def engine_arguments(config: Config, device_count: int) -> dict[str, Any]:
    """AsyncEngineArgs fields for a config (LLaMA-Factory's mapping; `vllm_config` wins)."""
    model = config.model
    arguments = {
        "model": model.model_name_or_path,
        "revision": model.model_revision,
        "trust_remote_code": model.trust_remote_code,
        "download_dir": model.cache_dir,
        "dtype": model.infer_dtype,
        "max_model_len": model.vllm_maxlen,
        "tensor_parallel_size": max(device_count, 1),
        "gpu_memory_utilization": model.vllm_gpu_util,
        "enforce_eager": model.vllm_enforce_eager,
        "enable_lora": bool(model.adapter_name_or_path),
        "max_lora_rank": model.vllm_max_lora_rank,
        "disable_log_stats": True,
    }
    return arguments | dict(model.vllm_config or {})


def _check_supported(config: Config) -> None:
    model = config.model
    if model.adapter_name_or_path and len(model.adapter_name_or_path) > 1:
        raise ConfigError(
            "vLLM serves a single LoRA adapter: merge the others into the base model first "
            "(`tuneforge export`), then list only the last one in `adapter_name_or_path`."
        )
    if model.quantization_bit is not None:
        raise ConfigError(
            "vLLM does not quantize on the fly (`quantization_bit`); serve a pre-quantized "
            "checkpoint (GPTQ, AWQ) or use `infer_backend: huggingface`."
        )


class VllmEngine(Engine):
    """An Engine on vLLM (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        vllm = import_vllm()
        super().__init__(config)
        _check_supported(config)
        import torch
        from vllm.lora.request import LoRARequest

        self.tokenizer, self.template = load_tokenizer_and_template(config)
        self.stop_ids = [
            self.tokenizer.convert_tokens_to_ids(word) for word in self.template.stop_words
        ]
        arguments = engine_arguments(config, torch.cuda.device_count())
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._engine = self._run(self._start(vllm, arguments))
        adapters = config.model.adapter_name_or_path
        self._lora = (
            LoRARequest(lora_name="default", lora_int_id=1, lora_path=adapters[0])
            if adapters
            else None
        )

    @staticmethod
    async def _start(vllm: Any, arguments: dict[str, Any]) -> Any:
        # created on the loop's thread, where vLLM starts its output handler
        return vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**arguments))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _answers(self, prompt_ids: list[int], settings: GenerationSettings) -> list[Response]:
        params = self._sampling_params(settings, settings.token_budget(len(prompt_ids)))
        final = self._run(self._final_output(prompt_ids, params))
        return [_response(output, len(prompt_ids)) for output in final.outputs]

    def _sampling_params(self, settings: GenerationSettings, budget: int) -> Any:
        from vllm import SamplingParams

        if settings.num_beams > 1:
            raise NotAvailableError(
                "beam search (num_beams > 1) is not available with `infer_backend: vllm`; "
                "use `infer_backend: huggingface`."
            )
        sampling = settings.do_sample
        return SamplingParams(
            n=settings.num_return_sequences,
            temperature=settings.temperature if sampling else 0.0,  # 0 is greedy in vLLM
            top_p=settings.top_p if sampling else 1.0,
            top_k=settings.top_k if sampling else 0,
            repetition_penalty=settings.repetition_penalty,
            max_tokens=budget,
            stop=list(settings.stop) or None,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=settings.skip_special_tokens,
        )

    def _requests(self, prompt_ids: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        return self._engine.generate(
            TokensPrompt(prompt_token_ids=prompt_ids),
            params,
            uuid.uuid4().hex,
            lora_request=self._lora,
        )

    async def _final_output(self, prompt_ids: list[int], params: Any) -> Any:
        final = None
        async for output in self._requests(prompt_ids, params):
            final = output  # outputs are cumulative: the last one holds every answer
        return final

    async def _produce(self, prompt_ids: list[int], params: Any, pieces: queue.Queue) -> None:
        sent, final = 0, None
        try:
            async for final in self._requests(prompt_ids, params):
                text = final.outputs[0].text
                if len(text) > sent:
                    pieces.put(text[sent:])
                    sent = len(text)
            if final is not None:
                pieces.put(_response(final.outputs[0], len(prompt_ids)))
        except Exception as error:  # handed to the reading thread, which raises it
            pieces.put(error)
        finally:
            pieces.put(_END)

    def _stream(
        self, prompt_ids: list[int], settings: GenerationSettings
    ) -> Generator[str, None, Response]:
        params = self._sampling_params(settings, settings.token_budget(len(prompt_ids)))
        pieces: queue.Queue = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(
            self._produce(prompt_ids, params, pieces), self._loop
        )
        try:
            while (item := pieces.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Response):
                    return item  # the whole answer, for token counts and finish_reason
                yield item
        finally:  # a reader that stops early aborts the request (vLLM aborts on cancel)
            future.cancel()
        # _produce sends the Response before _END whenever vLLM gave any output at all
        raise RuntimeError("vLLM finished the request without an output")

    def get_scores(self, texts: Any, **kwargs: Any) -> list[float]:
        raise NotAvailableError(
            "reward-model scores are computed by `infer_backend: huggingface`, not vLLM."
        )

    def close(self) -> None:
        self._engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


def _response(output: Any, prompt_tokens: int) -> Response:
    """Our Response from one vLLM CompletionOutput."""
    return Response(
        text=output.text,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(output.token_ids),
        finish_reason="length" if output.finish_reason == "length" else "stop",
    )
