"""The vLLM engine (`infer_backend: vllm`), for fast serving on CUDA GPUs.

vLLM's `AsyncLLMEngine` runs on an asyncio loop in a background thread; `submit` hands it a
coroutine per request (vLLM batches them itself) that reports the request's pieces and answers
to its listener, and the Engine's `Capacity` bounds the requests held, as for the Hugging Face
engine. Cancelling a request, or draining the engine, cancels that coroutine, which makes vLLM
abort the request (draining first reports each unfinished answer as cut, "length"). Prompts are
rendered and tokenized by tuneforge (the same text as training) and passed as token ids; the
template's stop words are passed as stop token ids, extra `stop` strings as vLLM stop strings.
A LoRA adapter is served through vLLM's LoRA support (`enable_lora`, `vllm_max_lora_rank`).
Keys: vllm_maxlen, vllm_gpu_util, vllm_enforce_eager, vllm_max_lora_rank, and vllm_config for
any other AsyncEngineArgs field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError, NotAvailableError
from tuneforge.inference.engine import (
    Done,
    Engine,
    Failed,
    Limits,
    Listener,
    Piece,
    Prompt,
    Response,
    Ticket,
)
from tuneforge.inference.generation import GenerationSettings
from tuneforge.models.tokenizer import load_tokenizer_and_template

if TYPE_CHECKING:
    from tuneforge.config.loader import Config


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

    def __init__(self, config: Config, limits: Limits | None = None) -> None:
        vllm = import_vllm()
        super().__init__(config, limits)
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
        self._running: set[concurrent.futures.Future] = set()
        self._draining = False

    @staticmethod
    async def _start(vllm: Any, arguments: dict[str, Any]) -> Any:
        # created on the loop's thread, where vLLM starts its output handler
        return vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**arguments))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def context_length(self) -> int | None:
        return self.config.model.vllm_maxlen

    def submit(self, prompt: Prompt, listener: Listener) -> Ticket:
        params = self._sampling_params(prompt.settings, prompt.budget)  # refuses beam search
        self.capacity.acquire()
        future = asyncio.run_coroutine_threadsafe(
            self._produce(prompt.ids, params, listener), self._loop
        )
        self._running.add(future)

        def finished(done: concurrent.futures.Future) -> None:
            self._running.discard(done)
            self.capacity.release()

        future.add_done_callback(finished)
        return future  # its cancel() cancels the coroutine, and vLLM aborts the request

    def drain(self) -> None:
        self.capacity.stop()
        self._draining = True
        for future in list(self._running):
            future.cancel()

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

    async def _produce(self, prompt_ids: list[int], params: Any, listener: Listener) -> None:
        """Report one request's outputs (cumulative texts) as pieces and answers."""
        sent: dict[int, int] = {}  # answer index -> characters reported
        done: set[int] = set()
        final: Any = None
        try:
            async for final in self._requests(prompt_ids, params):
                for output in final.outputs:
                    text = output.text
                    if len(text) > sent.get(output.index, 0):
                        listener(Piece(output.index, text[sent.get(output.index, 0) :]))
                        sent[output.index] = len(text)
                    if output.finish_reason is not None and output.index not in done:
                        done.add(output.index)
                        listener(Done(output.index, _response(output, len(prompt_ids))))
        except asyncio.CancelledError:
            if self._draining and final is not None:  # cut short: the answers so far
                for output in final.outputs:
                    if output.index not in done:
                        cut = _response(output, len(prompt_ids), cut=True)
                        listener(Done(output.index, cut))
            raise
        except Exception as error:  # reported to the caller
            listener(Failed(error))
            return
        if len(done) < params.n:
            listener(Failed(RuntimeError("vLLM finished the request without every output")))

    def get_scores(self, texts: Any, **kwargs: Any) -> list[float]:
        raise NotAvailableError(
            "reward-model scores are computed by `infer_backend: huggingface`, not vLLM."
        )

    def close(self) -> None:
        self.drain()
        self._engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


def _response(output: Any, prompt_tokens: int, cut: bool = False) -> Response:
    """Our Response from one vLLM CompletionOutput (`cut`: stopped before it finished)."""
    return Response(
        text=output.text,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(output.token_ids),
        finish_reason="length" if cut or output.finish_reason == "length" else "stop",
    )
