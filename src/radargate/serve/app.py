"""The routes: OpenAI's ``/v1`` API, ``/health``, ``/metrics`` and the routing page, over one :class:`Engine`.

The routes know HTTP (status codes, OpenAI's error bodies, server-sent events, the API key); what a request
means for the model (its tokens, whether it fits, its sampling) is the engine's.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from radargate.serve.engine import (
    Engine,
    EngineBusy,
    EngineDraining,
    GenerationFailed,
    InvalidRequest,
    Piece,
    SamplingParams,
)
from radargate.serve.metrics import ServerMetrics
from radargate.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    dump,
)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
"""Larger request bodies are refused with 413 before they are read."""


class APIError(Exception):
    """An error answered with OpenAI's body: ``status``, a message, its type, the field at fault and a code."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code, self.headers = status, kind, param, code, headers

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorDetail(message=str(self), type=self.kind, param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def create_app(engine: Engine, metrics: ServerMetrics, api_key: str | None = None) -> FastAPI:
    """The application; starting it starts the engine's generation thread, stopping it stops the thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="radargate serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    metrics.watch(engine)
    _add_error_handlers(app)
    _add_middleware(app, metrics)
    authorized = _key_check(api_key)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "draining" if engine.draining else "ok", "model": engine.served.model_id,
                "active_requests": engine.active_requests, "queued_requests": engine.queued_requests}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        card = ModelCard(id=engine.served.model_id, description=engine.served.description)
        return ModelList(data=[card]).model_dump()

    @app.get("/v1/routing/layers", dependencies=[Depends(authorized)])
    async def routing_layers() -> dict:
        """What the routing page labels: the adapted layers in the order of each token's routing rows."""
        routing = engine.routing
        return {"model": engine.served.model_id, "gate": engine.gate_name,
                "layers": routing.layer_names if routing else [], "num_experts": routing.num_experts if routing else 0}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest):
        _check_model(engine, body.model)
        prompt_ids = _completion_prompt(engine, body.prompt)
        params = _sampling(body, body.max_tokens)
        return await _answer(engine, body, prompt_ids, params, _CompletionFormat(engine.served.model_id, body))

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest):
        _check_model(engine, body.model)
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        prompt_ids = _engine_call(lambda: engine.encode_chat(messages))
        room = max(1, engine.context_length - len(prompt_ids))
        params = _sampling(body, body.token_limit(default=room))
        return await _answer(engine, body, prompt_ids, params, _ChatFormat(engine.served.model_id, body),
                             prompt_field="messages")

    return app


# -- requests ------------------------------------------------------------------------------------


def _check_model(engine: Engine, model: str) -> None:
    if model != engine.served.model_id:
        raise APIError(404, f"model={model!r} is not served here; this server serves {engine.served.model_id!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")


def _completion_prompt(engine: Engine, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and isinstance(prompt[0], int):
        vocabulary = len(engine.tokenizer)
        bad = [token for token in prompt if not 0 <= token < vocabulary]
        if bad:
            raise APIError(400, f"prompt token ids {bad[:5]} are outside the vocabulary (0 to {vocabulary - 1})",
                           param="prompt")
        return list(prompt)
    text = prompt if isinstance(prompt, str) else prompt[0]
    return _engine_call(lambda: engine.encode_text(text))


def _sampling(body: CompletionRequest | ChatCompletionRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          stop=body.stop_strings(), ignore_eos=body.ignore_eos)


def _engine_call(call: Callable):
    """Run an engine call, turning its refusals into API errors."""
    try:
        return call()
    except InvalidRequest as error:
        code = "context_length_exceeded" if "context" in str(error) else None
        raise APIError(400, str(error), param=error.field, code=code) from None
    except EngineBusy as error:
        raise APIError(429, str(error), kind="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(error.retry_after_s)}) from None
    except EngineDraining as error:
        raise APIError(503, str(error), kind="server_error", code="shutting_down") from None


async def _answer(engine: Engine, body, prompt_ids: list[int], params: SamplingParams, fmt,
                  prompt_field: str = "prompt"):
    generation = _engine_call(lambda: engine.submit(prompt_ids, params, prompt_field=prompt_field))
    if body.stream:
        return StreamingResponse(_events(generation, fmt, len(prompt_ids)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        whole = await generation.complete()
    except GenerationFailed as error:
        raise APIError(500, f"generation failed: {error}", kind="server_error") from None
    finally:
        generation.close()
    usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(whole.token_ids),
                  total_tokens=len(prompt_ids) + len(whole.token_ids))
    return JSONResponse(dump(fmt.response(whole, usage)))


async def _events(generation, fmt, prompt_tokens: int) -> AsyncIterator[str]:
    """Server-sent events: a chunk per step, the usage chunk if asked for, then ``[DONE]``. A client that goes
    away cancels this generator; closing the generation then frees its place in the batch."""
    completion_tokens = 0
    try:
        first = fmt.opening()
        if first is not None:
            yield _event(first)
        async for piece in generation.pieces():
            completion_tokens += len(piece.token_ids)
            yield _event(fmt.chunk(piece))
        options = fmt.body.stream_options
        if options is not None and options.include_usage:
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)
            yield _event(fmt.usage_chunk(usage))
    except GenerationFailed as error:
        yield _event(ErrorResponse(error=ErrorDetail(message=f"generation failed: {error}", type="server_error")))
    finally:
        generation.close()
    yield "data: [DONE]\n\n"


def _event(model) -> str:
    return f"data: {json.dumps(dump(model), separators=(',', ':'))}\n\n"


def _extensions(body, piece: Piece) -> dict:
    extras = {}
    if body.return_token_ids:
        extras["token_ids"] = piece.token_ids
    if body.return_routing:
        extras["routing"] = [routing.to_json() for routing in piece.routing]
    return extras


class _CompletionFormat:
    """``/v1/completions`` responses and stream chunks (``text_completion`` objects both)."""

    def __init__(self, model_id: str, body: CompletionRequest) -> None:
        self.model_id, self.body, self.id = model_id, body, f"cmpl-{uuid.uuid4().hex}"

    def opening(self) -> None:
        return None

    def response(self, piece: Piece, usage: Usage) -> CompletionResponse:
        choice = CompletionChoice(text=piece.text, finish_reason=piece.finish_reason, **_extensions(self.body, piece))
        return CompletionResponse(id=self.id, model=self.model_id, choices=[choice], usage=usage)

    def chunk(self, piece: Piece) -> CompletionResponse:
        choice = CompletionChoice(text=piece.text, finish_reason=piece.finish_reason, **_extensions(self.body, piece))
        return CompletionResponse(id=self.id, model=self.model_id, choices=[choice])

    def usage_chunk(self, usage: Usage) -> CompletionResponse:
        return CompletionResponse(id=self.id, model=self.model_id, choices=[], usage=usage)


class _ChatFormat:
    """``/v1/chat/completions`` responses and ``chat.completion.chunk`` stream chunks (the first names the role)."""

    def __init__(self, model_id: str, body: ChatCompletionRequest) -> None:
        self.model_id, self.body, self.id = model_id, body, f"chatcmpl-{uuid.uuid4().hex}"

    def opening(self) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, model=self.model_id,
                                   choices=[ChatChunkChoice(delta=Delta(role="assistant", content=""))])

    def response(self, piece: Piece, usage: Usage) -> ChatCompletionResponse:
        choice = ChatChoice(message=AssistantMessage(content=piece.text), finish_reason=piece.finish_reason,
                            **_extensions(self.body, piece))
        return ChatCompletionResponse(id=self.id, model=self.model_id, choices=[choice], usage=usage)

    def chunk(self, piece: Piece) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=Delta(content=piece.text), finish_reason=piece.finish_reason,
                                 **_extensions(self.body, piece))
        return ChatCompletionChunk(id=self.id, model=self.model_id, choices=[choice])

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, model=self.model_id, choices=[], usage=usage)


# -- errors, limits, key ---------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, str(error.detail), kind=kind).response()


def _validation_error(errors: list[dict]) -> APIError:
    """The first problem, naming its field (``messages.0.role``) and what is allowed; malformed JSON as such."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                        param="body", code="invalid_json")
    param = _field_path(first.get("loc", ()))
    if not param:
        return APIError(400, f"the request body must be a JSON object ({first.get('msg', 'invalid')})", param="body")
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = f"{param} is not a field this server accepts"
    elif first.get("type") == "missing":
        message = f"{param} is required"
    else:
        message = f"{param}={json.dumps(first.get('input'))[:200]}: {message}"
    return APIError(400, message, param=param)


def _field_path(location: tuple) -> str:
    """``("body", "messages", 0, "content", "str")`` -> ``messages.0.content``: the field, without the union
    member pydantic tried (``str``, ``list[int]``, ``function-after[...]``)."""
    parts = []
    for part in location[1:] if location[:1] == ("body",) else location:
        if isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part):
            break
        parts.append(str(part))
    return ".".join(parts)


def _add_middleware(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.middleware("http")
    async def limit_and_count(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            response = APIError(413, f"the request body has {length} bytes; at most {MAX_BODY_BYTES} are accepted",
                                param="body", code="body_too_large").response()
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that wants ``Authorization: Bearer <api_key>`` (or nothing, without a key)."""

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           kind="authentication_error", code="missing_api_key")
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "the API key is wrong", kind="authentication_error", code="invalid_api_key")

    return authorized
