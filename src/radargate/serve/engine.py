"""The engine: a trained run (or a config's base model) behind transformers' continuous batching.

transformers' ``ContinuousBatchingManager`` schedules the requests, keeps their KV caches in its paged cache
and runs the model on a thread of its own; a mixture's layers sit inside the model and act per token, so they
run unchanged on its packed batches (docs/serving.md has the evidence). This module adds what a server needs
around it: admission with a bounded queue, per-request sampling (``sampling.py``), detokenising with stop
strings, each token's routing (``routing.py``), and the numbers ``/metrics`` shows. It knows models, not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from radargate.experiment.methods import describe_adapter, generating_model, model_to_evaluate
from radargate.model import MoLoRAModel
from radargate.serve.routing import RoutingRecorder, TokenRouting
from radargate.serve.sampling import request_kwargs, sampling_processors


class EngineBusy(Exception):
    """The queue is full; ``retry_after_s`` is how long a client should wait before trying again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDraining(Exception):
    """The server is shutting down: it finishes what it admitted and admits nothing new."""


class InvalidRequest(ValueError):
    """A request the model cannot serve as asked; ``field`` names the part of the request at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class GenerationFailed(RuntimeError):
    """transformers' generation loop failed this request (its message is kept)."""


@dataclass(frozen=True)
class EngineSettings:
    """How much the engine takes on at once; each value is checked where it is set."""

    max_batch: int = 8
    """Requests decoded together in one forward pass."""
    max_queue: int = 32
    """Admitted requests waiting for a place in the batch; one more is refused with ``EngineBusy``."""
    context_length: int = 2048
    """Prompt plus generated tokens of one request, at most (capped by the model's own maximum)."""
    max_batch_tokens: int = 512
    """Tokens in one forward pass; a longer prompt is prefilled over several."""
    page_size: int = 64
    """Tokens per page of the paged KV cache."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "context_length", "max_batch_tokens", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_queue < 0:
            raise ValueError(f"max_queue={self.max_queue} must be 0 or more")


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding: greedy at temperature 0, else seeded sampling with nucleus ``top_p``."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    """Go on past the end-of-sequence token until ``max_tokens`` or a stop string."""


@dataclass
class Piece:
    """What one step added to a request: its tokens, their text (held back while a stop string may be
    starting), each token's routing (mixtures only) and, at the end, why it finished."""

    token_ids: list[int]
    text: str
    routing: list[TokenRouting] = field(default_factory=list)
    finish_reason: str | None = None


class EngineObserver(Protocol):
    """What the engine reports as it works (``metrics.ServerMetrics`` turns it into Prometheus series)."""

    def batch(self, requests: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def tokens(self, count: int) -> None: ...


class _NoObserver:
    def batch(self, requests: int) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def next_token(self, seconds: float) -> None:
        pass

    def tokens(self, count: int) -> None:
        pass


@dataclass(frozen=True)
class ServedModel:
    """What the server serves: its id in the API, and a line saying what it is."""

    model_id: str
    description: str


class Engine:
    """Loads a model once, then serves many requests at a time through transformers' continuous batching."""

    def __init__(self, model: torch.nn.Module, tokenizer, served: ServedModel, settings: EngineSettings,
                 observer: EngineObserver | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.served = served
        self.settings = settings
        self.observer = observer or _NoObserver()
        self.hf_model = generating_model(model)
        text_config = self.hf_model.config.get_text_config()
        model_limit = getattr(text_config, "max_position_embeddings", None) or settings.context_length
        self.context_length = min(settings.context_length, model_limit)
        self.eos_token_ids = _eos_token_ids(self.hf_model, tokenizer)
        self.routing = RoutingRecorder(model) if isinstance(model, MoLoRAModel) else None
        self.gate_name = ", ".join(describe_adapter(model).get("gates", [])) or None
        """The mixture's gate (``radar``, ``topk``...); ``None`` for a model without one."""
        self._active: set[str] = set()
        self._draining = False
        self._durations: deque[float] = deque(maxlen=20)
        """Recent requests' durations in seconds, for ``Retry-After``."""
        self._manager = None
        self._weights_fixed = contextlib.ExitStack()

    @classmethod
    def load(cls, run_dir: str | Path | None = None, config_path: str | Path | None = None,
             overrides: Sequence[str] = (), settings: EngineSettings | None = None,
             observer: EngineObserver | None = None) -> Engine:
        """A trained run of any method (``run_dir``), else the base model of ``config_path``, loaded by the
        harness's own loader: a damaged run folder fails here with the loader's error."""
        model, tokenizer, config = model_to_evaluate(run_dir, config_path, overrides)
        model_id = Path(run_dir).resolve().name if run_dir is not None else f"{config.name}-base"
        served = ServedModel(model_id, _describe(model, config.method, config.model.name))
        return cls(model, tokenizer, served, settings or EngineSettings(), observer)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start transformers' generation thread, with a KV cache for ``max_batch`` full-length requests.

        The objects alive now (the model's: modules, parameters, the tokenizer) are moved out of the garbage
        collector's generations (``gc.freeze``) until :meth:`stop`: they live as long as the server, and each full
        collection, triggered by the objects every decoding step allocates, would walk them all again (with the
        RadarGate run, one request: about 2 ms per generated token, measured in ``generate``).
        """
        gc.freeze()
        settings = self.settings
        pages = math.ceil(self.context_length / settings.page_size) * settings.max_batch
        batching = ContinuousBatchingConfig(
            page_size=settings.page_size, num_blocks=pages, max_batch_tokens=settings.max_batch_tokens,
            max_requests_per_batch=settings.max_batch, allow_block_sharing=False,
        )
        generation = GenerationConfig(do_sample=False, eos_token_id=self.eos_token_ids,
                                      pad_token_id=self.tokenizer.pad_token_id)
        manager = self.hf_model.init_continuous_batching(generation_config=generation,
                                                         continuous_batching_config=batching)
        manager.logit_processor = sampling_processors()
        self._watch_steps(manager)
        if self.routing is not None:
            self.routing.start()
        if isinstance(self.model, MoLoRAModel):  # a server never changes the weights
            self._weights_fixed.enter_context(self.model.weights_fixed())
        with torch.inference_mode():
            manager.start()
        self._manager = manager

    def _watch_steps(self, manager) -> None:
        """After each forward, before its tokens are handed out: the batch size, and each new token's routing."""
        step = manager._generation_step

        def step_and_record() -> None:
            step()
            inputs = manager.batch_processor.inputs_and_outputs
            self.observer.batch(len(inputs.requests_in_batch))
            if self.routing is not None:
                self.routing.harvest(dict(inputs.req_id_to_new_token_position))

        manager._generation_step = step_and_record

    def drain(self) -> None:
        """Admit nothing new; what was admitted runs to its end."""
        self._draining = True

    def stop(self) -> None:
        """Stop the generation thread once it has nothing left to do."""
        if self._manager is not None:
            self._manager.stop(block=True, timeout=30)
            self._manager = None
        if self.routing is not None:
            self.routing.stop()
        self._weights_fixed.close()
        gc.unfreeze()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def running(self) -> bool:
        return self._manager is not None and self._manager.is_running()

    @property
    def active_requests(self) -> int:
        return len(self._active)

    @property
    def queued_requests(self) -> int:
        return max(0, len(self._active) - self.settings.max_batch)

    # -- prompts ---------------------------------------------------------------------------------

    def encode_text(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokenizer's chat template with the assistant's turn opened, as ``generate`` would be given it."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("messages", f"the model {self.served.model_id!r} has no chat template; use "
                                 "/v1/completions with a plain prompt")
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    # -- requests --------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams, prompt_field: str = "prompt") -> Generation:
        """Admit one request and hand it to the batch, or refuse it now (nothing is started then); a prompt that
        does not fit is blamed on ``prompt_field`` (chat: ``messages``)."""
        self._check_fits(prompt_ids, params, prompt_field)
        if self._draining or not self.running:
            raise EngineDraining("the server is shutting down and admits no new request")
        capacity = self.settings.max_batch + self.settings.max_queue
        if len(self._active) >= capacity:
            raise EngineBusy(f"the server is at its limit of {capacity} requests (--max-batch "
                             f"{self.settings.max_batch} running, --max-queue {self.settings.max_queue} waiting); "
                             "retry later", self._retry_after_s())
        request_id = uuid.uuid4().hex
        generation = Generation(self, request_id, prompt_ids, params)
        self._active.add(request_id)
        if self.routing is not None:
            self.routing.open(request_id)
        self._manager.register_result_handler(request_id, generation.deliver)
        seed = params.seed if params.seed is not None else secrets.randbits(31)
        eos = -1 if params.ignore_eos else self.eos_token_ids  # transformers' "no end-of-sequence token"
        self._manager.add_request(prompt_ids, request_id=request_id, max_new_tokens=params.max_tokens,
                                  streaming=True, eos_token_id=eos,
                                  **request_kwargs(params.temperature, params.top_p, seed))
        return generation

    def _check_fits(self, prompt_ids: list[int], params: SamplingParams, prompt_field: str) -> None:
        if not prompt_ids:
            raise InvalidRequest(prompt_field, "the prompt is empty; give at least one token of text")
        if len(prompt_ids) >= self.context_length:
            raise InvalidRequest(prompt_field, f"the prompt has {len(prompt_ids)} tokens; this server's context is "
                                 f"{self.context_length} tokens, so at most {self.context_length - 1} fit")
        room = self.context_length - len(prompt_ids)
        if params.max_tokens > room:
            raise InvalidRequest("max_tokens", f"max_tokens={params.max_tokens} does not fit: the prompt has "
                                 f"{len(prompt_ids)} tokens and the context {self.context_length}, so at most "
                                 f"{room} can be generated")

    def _retry_after_s(self) -> int:
        """About one mean request duration (at least a second): when a place is likely to be free again."""
        recent = self._durations
        return max(1, math.ceil(sum(recent) / len(recent))) if recent else 1

    def _release(self, generation: Generation, finished: bool) -> None:
        """Free the request's place; a request that did not finish is cancelled in the batch too."""
        if generation.request_id not in self._active:
            return
        self._active.discard(generation.request_id)
        if self.routing is not None:
            self.routing.close(generation.request_id)
        if not finished and self._manager is not None:
            self._manager.cancel_request(generation.request_id)
            with self._manager.output_router._lock:  # a cancelled request never delivers its last output
                self._manager.output_router.result_handlers.pop(generation.request_id, None)
        self._durations.append(time.perf_counter() - generation.started)


class Generation:
    """One admitted request: its outputs arrive on the event loop; :meth:`pieces` turns them into text."""

    def __init__(self, engine: Engine, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.engine = engine
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.started = time.perf_counter()
        self.token_ids: list[int] = []
        self._outputs: asyncio.Queue = asyncio.Queue()
        self._text = _IncrementalText(engine.tokenizer, params.stop)
        self._finished = False
        self._batch_done = False
        """Whether transformers finished the request itself (else closing it cancels it there)."""

    def deliver(self, output) -> None:
        """transformers' callback, on the event loop: one output per generated token (all tokens so far)."""
        self._outputs.put_nowait(output)

    async def pieces(self) -> AsyncIterator[Piece]:
        """The request's tokens as they come, the last piece with its ``finish_reason``; closes the request when
        done or abandoned (a client that went away frees its place)."""
        last_token_at = None
        try:
            while not self._finished:
                output = await self._outputs.get()
                if output.error is not None:
                    raise GenerationFailed(output.error)
                self._batch_done = output.is_finished()
                new = output.generated_tokens[len(self.token_ids):]
                now = time.perf_counter()
                if new:
                    if last_token_at is None:
                        self.engine.observer.first_token(now - self.started)
                    else:
                        self.engine.observer.next_token((now - last_token_at) / len(new))
                    last_token_at = now
                    self.engine.observer.tokens(len(new))
                piece = self._piece(new, done=output.is_finished())
                if piece is not None:
                    yield piece
        finally:
            self.close()

    def _piece(self, new: list[int], done: bool) -> Piece | None:
        self.token_ids.extend(new)
        routing = [self.engine.routing.pop(self.request_id) for _ in new] if self.engine.routing is not None else []
        text, stopped = self._text.add(new)
        finish_reason = None
        if stopped or (new and new[-1] in self.engine.eos_token_ids and not self.params.ignore_eos):
            finish_reason = "stop"
        elif len(self.token_ids) >= self.params.max_tokens:
            finish_reason = "length"
        elif done:
            finish_reason = "stop"
        if finish_reason is not None:
            self._finished = True
            text += self._text.flush() if not stopped else ""
        if not new and finish_reason is None:
            return None
        return Piece(token_ids=new, text=text, routing=[r for r in routing if r is not None],
                     finish_reason=finish_reason)

    async def complete(self) -> Piece:
        """The whole answer as one piece (a non-streamed response)."""
        pieces = [piece async for piece in self.pieces()]
        return Piece(token_ids=[t for p in pieces for t in p.token_ids], text="".join(p.text for p in pieces),
                     routing=[r for p in pieces for r in p.routing],
                     finish_reason=pieces[-1].finish_reason if pieces else "stop")

    def close(self) -> None:
        """Free the request's place; one that transformers is still generating (a stop string was reached, or its
        client went away) is dropped from the batch."""
        self.engine._release(self, finished=self._batch_done)


class _IncrementalText:
    """Text of a growing token list, handed out once it is final: not while it ends in half a character, nor
    while its end could be the start of a stop string. A stop string ends the text before it."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.emitted = 0
        self.stopped = False

    def add(self, new: list[int]) -> tuple[str, bool]:
        """The newly final text, and whether a stop string was reached."""
        if self.stopped:
            return "", True
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._take(text, cut), True
        if text.endswith("\ufffd"):
            return "", False
        return self._take(text, len(text) - self._held_back(text)), False

    def flush(self) -> str:
        """The rest, when the request ends for another reason than a stop string."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        end = max(end, self.emitted)
        piece, self.emitted = text[self.emitted:end], end
        return piece

    def _stop_at(self, text: str) -> int | None:
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.emitted - longest)
        found = [index for s in self.stop if (index := text.find(s, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        return max((size for s in self.stop for size in range(1, len(s)) if text.endswith(s[:size])), default=0)


def _describe(model: torch.nn.Module, method: str, base_name: str) -> str:
    """One line on what is served, read from the model's layers."""
    adapter = describe_adapter(model)
    if adapter["kind"] == "mixture":
        return (f"{method} run on {base_name}: {', '.join(adapter['gates'])} gate over {adapter['num_experts'][0]} "
                f"LoRA experts of rank {adapter['r'][0]} in {adapter['layers']} layers")
    if adapter["kind"] == "peft_lora":
        return f"{method} run on {base_name}: PEFT LoRA of rank {adapter['r'][0]}"
    return f"the base model {base_name}, untrained"


def _eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """What ``generate`` stops at: the model's generation config, else the tokenizer's end-of-sequence token."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]

