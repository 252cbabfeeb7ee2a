"""The Hugging Face engine's generation worker: one thread owns the model and decodes the
waiting requests together.

`Scheduler.submit` puts a request in a bounded queue (the engine's `Capacity`) and returns at
once; its events go to the request's listener from the worker thread. The worker loops:

1. run the calls handed to it (reward scores: the model is only ever used on this thread);
2. let waiting requests join, up to `max_concurrent` requests decoding: their prompts are
   prefilled together (left-padded, one forward), each answer's first token is chosen, and the
   new rows join the running batch, whose KV cache and attention mask are left-padded to a
   common width (`_Batch.extend`);
3. decode one token for every row of the batch in one forward (each row at its own position,
   with the padding masked), then feed each row its token: a row ends on its own, at a stop
   token, a stop string (`TextAssembler`) or its token budget, and leaves the batch, which drops
   the padding no row needs any more.

So requests that wait together decode together, and a new request joins at the next token, not
at the end of the batch. `n` answers to one prompt are `n` rows sharing one prefill. Each row
chooses its token with its own settings (greedy, or sampled with its temperature, top-k and
top-p; its repetition penalty), with transformers' logits processors, as `generate` would.

Greedy answers are the answers each request gets alone, up to floating-point rounding:
padding is masked out exactly, but a batch adds the same numbers in another order.

Batching needs a plain KV cache (every layer's keys and values in a `DynamicLayer`) and the
padding mask honoured by every layer: the model types of the padding-free training path (the
family table, proven by the conformance suite, `tests/integration/test_batched_families.py`).
Other models (state-space and hybrid layers, remote code), beam search and
`use_kv_cache: false` are served one request at a time by transformers' `generate`, still on
this thread (`_solo`).

A cancelled request (client gone) leaves the batch at the next step and frees its place;
`drain` ends every row at its next token with finish reason "length" and fails the waiting
requests with EngineStopped. The thread is a daemon: it never keeps the process alive.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.generation.streamers import BaseStreamer

from tuneforge.inference.engine import (
    Capacity,
    Done,
    EngineStopped,
    Failed,
    Listener,
    Piece,
    Prompt,
    Response,
)
from tuneforge.inference.generation import GenerationSettings, TextAssembler

logger = logging.getLogger("tuneforge")

PREFILL_TOKENS = 16384
"""The most (padded) prompt tokens one prefill forward takes; a longer prompt goes alone."""
JOIN_TIMEOUT_SECONDS = 30

T = TypeVar("T")
_Call = tuple[Callable[[], Any], concurrent.futures.Future]


class _Request:
    """A submitted prompt; also its Ticket (`cancel`)."""

    def __init__(self, prompt: Prompt, listener: Listener, scheduler: Scheduler) -> None:
        self.prompt = prompt
        self.listener = listener
        self.rows_left = prompt.n
        self.cancelled = False
        self.released = False
        self._scheduler = scheduler

    def cancel(self) -> None:
        self._scheduler._cancel(self)


class _Row:
    """One answer being generated."""

    def __init__(self, request: _Request, index: int, tokenizer: Any) -> None:
        settings = request.prompt.settings
        self.request = request
        self.index = index
        self.ids = list(request.prompt.ids)  # prompt and answer so far (repetition penalty)
        self.generated = 0
        self.done = False
        self.assembler = TextAssembler(tokenizer, settings.stop, settings.skip_special_tokens)
        self.processors = logits_processors(settings)
        self.sample = settings.do_sample


class _Batch:
    """The rows decoding together: their KV cache, attention mask, positions, next inputs.

    Row i's cache holds its tokens right-aligned, with padding (mask 0) on the left.
    """

    def __init__(
        self,
        rows: list[_Row],
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
    ) -> None:
        self.rows, self.cache, self.mask = rows, cache, mask
        self.positions = positions  # [rows]: the position of each row's next input token
        self.tokens = tokens  # [rows]: each row's next input token

    def select(self, keep: list[int]) -> None:
        """Keep only rows `keep`, and drop the columns of padding no kept row needs."""
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.positions, self.tokens = (
            self.mask[index],
            self.positions[index],
            self.tokens[index],
        )
        self.cache.batch_select_indices(index)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start:
            self.mask = self.mask[:, start:]
            for layer in _layers(self.cache):
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]

    def extend(self, other: _Batch) -> None:
        """Append the rows of `other`, padding the narrower of the two on the left."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        self.mask = torch.cat([_pad_left_2d(self.mask, width), _pad_left_2d(other.mask, width)])
        self.rows += other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.tokens = torch.cat([self.tokens, other.tokens])


def _layers(cache: DynamicCache) -> list[Any]:
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """[rows, heads, length, dim] states padded with zeros on the left to `width`."""
    missing = width - states.shape[2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states


def _pad_left_2d(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return F.pad(mask, (missing, 0)) if missing else mask


def logits_processors(settings: GenerationSettings) -> LogitsProcessorList | None:
    """transformers' processors for one answer's settings, in `generate`'s order (None: plain
    greedy)."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.do_sample:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    return processors or None


def generate_kwargs(settings: GenerationSettings, budget: int) -> dict[str, Any]:
    """transformers `generate` keyword arguments for one request's settings."""
    kwargs: dict[str, Any] = {
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


def generate_rows(
    model: Any,
    prompt_ids: list[int],
    settings: GenerationSettings,
    budget: int,
    criteria: StoppingCriteria | None = None,
    streamer: BaseStreamer | None = None,
) -> list[list[int]]:
    """transformers' `generate` on one prompt: the new token ids of each answer (rows may end
    with stop and pad tokens)."""
    inputs = torch.tensor([prompt_ids], device=model.device)
    kwargs = generate_kwargs(settings, budget)
    if settings.num_beams > 1:
        kwargs["num_return_sequences"] = settings.num_return_sequences
    else:  # n independent answers: the prompt n times in one batch (greedy included)
        inputs = inputs.expand(settings.num_return_sequences, -1)
    with torch.inference_mode():
        output = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            stopping_criteria=StoppingCriteriaList([criteria] if criteria else []),
            streamer=streamer,
            **kwargs,
        )
    rows: list[list[int]] = output[:, len(prompt_ids) :].tolist()
    return rows


class Scheduler:
    """The worker thread that owns a model (see the module docstring).

    Args:
        model: The loaded causal LM (eval mode, on its device).
        tokenizer: Its tokenizer (decodes the answers).
        stop_ids: Token ids that end an answer (the generation EOS ids).
        capacity: The engine's places (max_concurrent decoding, max_queue waiting).
        batched: Decode requests together (False: each alone through `generate`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: set[int],
        capacity: Capacity,
        batched: bool,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.capacity = capacity
        self.batched = batched
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        forward = inspect.signature(_base_model(model).forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self._batch: _Batch | None = None
        self._waiting: collections.deque[_Request] = collections.deque()
        self._calls: collections.deque[_Call] = collections.deque()
        self._draining = False
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.steps = 0  # decoding forwards so far (for tests and figures)
        self.widest = 0  # the most rows one forward has decoded
        self._thread = threading.Thread(target=self._run, name="tuneforge-generation", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------

    def submit(self, prompt: Prompt, listener: Listener) -> _Request:
        """Queue a prompt (see `Engine.submit`)."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        self.capacity.acquire()
        request = _Request(prompt, listener, self)
        with self._lock:
            self._waiting.append(request)
            self._wake.notify()
        return request

    def call(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `function` on the worker thread, between two decoding steps."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed or self._draining:
                raise EngineStopped()
            self._calls.append((function, future))
            self._wake.notify()
        return future

    def drain(self) -> None:
        """Stop taking requests and end the ones held (see `Engine.drain`); returns at once."""
        self.capacity.stop()
        with self._lock:
            self._draining = True
            self._wake.notify()

    def close(self) -> None:
        """Drain, then end the worker thread (waiting at most JOIN_TIMEOUT_SECONDS)."""
        self.drain()
        with self._lock:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT_SECONDS)

    def _cancel(self, request: _Request) -> None:
        with self._lock:
            request.cancelled = True
            waiting = request in self._waiting
            if waiting:
                self._waiting.remove(request)
            self._wake.notify()
        if waiting:
            self._release(request)

    def _release(self, request: _Request) -> None:
        with self._lock:
            if request.released:
                return
            request.released = True
        self.capacity.release()

    # ---- the worker thread -----------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while (work := self._next_work()) is not None:
                try:
                    self._work(*work)
                except Exception as error:  # a bug: fail what is held, keep serving
                    logger.exception("the generation worker failed")
                    self._fail(self._batch.rows if self._batch else [], error)
                    self._batch = None

    def _work(self, calls: list[_Call], joining: list[_Request], stopped: list[_Request]) -> None:
        for request in stopped:
            self._emit(request, Failed(EngineStopped()))
            self._release(request)
        for function, future in calls:
            _run_call(function, future)
        if self._draining and self._batch is not None:
            self._end_batch("length")
        batched = []
        for index, request in enumerate(joining):
            if request.cancelled:
                self._release(request)
            elif self._fits_batch(request):
                batched.append(request)
            else:
                try:
                    self._solo(request)
                except Exception as error:
                    self._fail_requests(joining[index:], error)
                    raise
        if batched:
            try:
                self._join(batched)
            except Exception as error:
                self._fail_requests(batched, error)
                raise
        if self._batch is not None:
            self._step()

    def _next_work(self) -> tuple[list[_Call], list[_Request], list[_Request]] | None:
        """What to do next: calls to run, requests joining the batch, requests to refuse
        (draining). Waits until there is something; None once the scheduler is closed."""
        with self._lock:
            while not (self._calls or self._batch or self._waiting):
                if self._closed:
                    return None
                self._wake.wait()
            calls = list(self._calls)
            self._calls.clear()
            if self._draining:
                stopped = list(self._waiting)
                self._waiting.clear()
                return calls, [], stopped
            decoding = len({row.request for row in self._batch.rows}) if self._batch else 0
            joining: list[_Request] = []
            width = 0
            while self._waiting and decoding + len(joining) < self.capacity.limits.max_concurrent:
                width = max(width, len(self._waiting[0].prompt.ids))
                if joining and width * (len(joining) + 1) > PREFILL_TOKENS:
                    break
                joining.append(self._waiting.popleft())
            return calls, joining, []

    def _fits_batch(self, request: _Request) -> bool:
        settings = request.prompt.settings
        return self.batched and settings.num_beams == 1

    def _emit(self, request: _Request, event: Piece | Done | Failed) -> None:
        if request.cancelled:
            return
        try:
            request.listener(event)
        except Exception:  # a listener's bug must not stop the worker
            logger.exception("a generation listener failed")

    def _take(self, row: _Row, token: int) -> None:
        """Feed a row its next token: emit the text now final; end the row on a stop token, a
        stop string or its budget."""
        row.generated += 1
        row.ids.append(token)
        if token in self.stop_ids:
            self._finish(row, "stop", row.generated)  # the stop token counts, as in generate
            return
        if piece := row.assembler.add(token):
            self._emit(row.request, Piece(row.index, piece))
        if row.assembler.stopped:
            self._finish(row, "stop", len(row.assembler.ids))
        elif row.generated >= row.request.prompt.budget:
            self._finish(row, "length", row.generated)

    def _finish(self, row: _Row, reason: Literal["stop", "length"], used: int) -> None:
        if row.done:
            return
        row.done = True
        if tail := row.assembler.finish():
            self._emit(row.request, Piece(row.index, tail))
        prompt_tokens = len(row.request.prompt.ids)
        response = Response(row.assembler.text, prompt_tokens, used, reason)
        self._emit(row.request, Done(row.index, response))
        row.request.rows_left -= 1
        if row.request.rows_left == 0:
            self._release(row.request)

    def _fail(self, rows: list[_Row], error: BaseException) -> None:
        for row in rows:
            row.done = True
        self._fail_requests(list(dict.fromkeys(row.request for row in rows)), error)

    def _fail_requests(self, requests: list[_Request], error: BaseException) -> None:
        for request in requests:
            if request.rows_left > 0 and not request.released:
                self._emit(request, Failed(error))
                request.rows_left = 0
            self._release(request)

    def _end_batch(self, reason: Literal["stop", "length"]) -> None:
        assert self._batch is not None
        for row in self._batch.rows:
            self._finish(row, reason, row.generated)
        self._batch = None

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Each row's next token from its logits ([rows, vocab])."""
        logits = logits.float()
        if all(row.processors is None and not row.sample for row in rows):
            chosen: list[int] = logits.argmax(dim=-1).tolist()
            return chosen
        chosen = []
        for position, row in enumerate(rows):
            scores = logits[position : position + 1]
            if row.processors is not None:
                seen = torch.tensor([row.ids], device=scores.device)
                scores = row.processors(cast(torch.LongTensor, seen), scores)
            if row.sample:
                token = torch.multinomial(scores.softmax(dim=-1), num_samples=1)
            else:
                token = scores.argmax(dim=-1)
            chosen.append(int(token))
        return chosen

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """The model's last-position logits ([rows, vocab]) for a batch of inputs."""
        output = self.model(use_cache=True, **inputs, **self._keep_last)
        return output.logits[:, -1, :]

    def _join(self, requests: list[_Request]) -> None:
        """Prefill the prompts of `requests` together, choose their first tokens, and add
        their rows to the batch."""
        device = self.model.device
        width = max(len(request.prompt.ids) for request in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for index, request in enumerate(requests):
            ids = request.prompt.ids
            input_ids[index, width - len(ids) :] = torch.tensor(ids)
            mask[index, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 1)  # as generate does
        cache = DynamicCache()
        rows = [
            _Row(request, index, self.tokenizer)
            for request in requests
            for index in range(request.prompt.n)
        ]
        try:
            logits = self._forward(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                **{self._cache_arg: cache},
            )
        except Exception as error:
            logger.exception("prefill failed")
            self._fail(rows, error)
            return
        owner = [index for index, request in enumerate(requests) for _ in range(request.prompt.n)]
        if len(owner) > len(requests):  # n answers to one prompt share its prefill
            select = torch.tensor(owner, device=device)
            cache.batch_select_indices(select)
            mask, logits = mask[select], logits[select]
        lengths = [len(row.request.prompt.ids) for row in rows]
        tokens = self._choose(logits, rows)
        batch = _Batch(
            rows,
            cache,
            mask,
            torch.tensor(lengths, device=device),
            torch.tensor(tokens, device=device),
        )
        for row, token in zip(rows, tokens):
            self._take(row, token)
        keep = [index for index, row in enumerate(rows) if not row.done]
        if not keep:
            return
        if len(keep) < len(rows):
            batch.select(keep)
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.extend(batch)

    def _step(self) -> None:
        """Decode one token for every row of the batch."""
        batch = self._batch
        assert batch is not None
        gone = [index for index, row in enumerate(batch.rows) if row.request.cancelled]
        if gone:
            for index in gone:
                self._release(batch.rows[index].request)
            keep = [index for index in range(len(batch.rows)) if index not in set(gone)]
            if not keep:
                self._batch = None
                return
            batch.select(keep)
        mask = F.pad(batch.mask, (0, 1), value=1)
        try:
            logits = self._forward(
                input_ids=batch.tokens[:, None],
                attention_mask=mask,
                position_ids=batch.positions[:, None],
                **{self._cache_arg: batch.cache},
            )
        except Exception as error:
            logger.exception("decoding failed")
            self._fail(batch.rows, error)
            self._batch = None
            return
        self.steps += 1
        self.widest = max(self.widest, len(batch.rows))
        batch.mask = mask
        batch.positions = batch.positions + 1
        tokens = self._choose(logits, batch.rows)
        batch.tokens = torch.tensor(tokens, device=batch.tokens.device)
        for row, token in zip(batch.rows, tokens):
            self._take(row, token)
        keep = [index for index, row in enumerate(batch.rows) if not row.done]
        if not keep:
            self._batch = None
        elif len(keep) < len(batch.rows):
            batch.select(keep)

    def _solo(self, request: _Request) -> None:
        """Generate one request alone with transformers' `generate` (beam search, or a model
        that cannot decode in a batch); streamed token by token except beam search."""
        prompt = request.prompt
        rows = [_Row(request, index, self.tokenizer) for index in range(prompt.n)]
        criteria = _RowsDone(rows, self)
        beams = prompt.settings.num_beams > 1
        streamer = None if beams else _RowsStreamer(rows, self)
        try:
            output = generate_rows(
                self.model, prompt.ids, prompt.settings, prompt.budget, criteria, streamer
            )
        except Exception as error:
            logger.exception("generation failed")
            self._fail(rows, error)
            return
        if request.cancelled:
            self._release(request)
            return
        for row, tokens in zip(rows, output):
            for token in tokens if beams else ():
                if row.done:
                    break
                self._take(row, token)
            # generate stopped the row (its budget, or draining)
            self._finish(row, "length", row.generated)


class _RowsStreamer(BaseStreamer):
    """Feeds `generate`'s tokens to their rows, as they come."""

    def __init__(self, rows: list[_Row], scheduler: Scheduler) -> None:
        self.rows, self.scheduler = rows, scheduler
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if not row.done:
                self.scheduler._take(row, token)

    def end(self) -> None:
        pass


class _RowsDone(StoppingCriteria):
    """Stops each row of `generate` once it is done, and every row when its request is
    cancelled or the scheduler drains."""

    def __init__(self, rows: list[_Row], scheduler: Scheduler) -> None:
        self.rows, self.scheduler = rows, scheduler

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.rows[0].request.cancelled or self.scheduler._draining:
            done = [True] * input_ids.shape[0]
        else:
            done = [row.done for row in self.rows]
            done += [False] * (input_ids.shape[0] - len(done))  # beam search's extra rows
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _run_call(function: Callable[[], Any], future: concurrent.futures.Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(function())
    except BaseException as error:
        future.set_exception(error)


def _base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (whose forward takes **kwargs)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def can_batch(model: Any, padding_free_family: bool, use_kv_cache: bool) -> bool:
    """Whether `Scheduler` may decode this model's requests together: a family of the
    padding-free path whose forward fills a plain DynamicCache (checked on one token)."""
    if not (padding_free_family and use_kv_cache):
        return False
    forward = inspect.signature(_base_model(model).forward).parameters
    cache_arg = "cache" if "cache" in forward else "past_key_values"
    if cache_arg not in forward or "position_ids" not in forward:
        return False
    cache = DynamicCache()
    ids = torch.zeros((1, 2), dtype=torch.long, device=model.device)
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True, **{cache_arg: cache})
    except Exception as error:  # the model needs a cache of its own
        logger.info("Batched decoding is off: the model does not take a DynamicCache (%s).", error)
        return False
    return bool(cache.layers) and all(
        type(layer) is DynamicLayer and getattr(layer, "is_initialized", False)
        for layer in cache.layers
    )
