"""The OpenAI wire format, as pydantic models: what clients send and what the server answers.

Only what this server does is accepted: an unknown field, or a supported one with a value it cannot honour
(``n`` other than 1, a penalty, log-probabilities), is a 400 naming that field rather than silently ignored.
Two fields beyond OpenAI's, as vLLM has them: ``return_token_ids`` adds each choice's generated token ids, and
``return_routing`` adds each generated token's gate weights per adapted layer (the routing page uses it).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingRequest(_Strict):
    """Fields that both endpoints share, with OpenAI's defaults (temperature 1: sampling unless asked otherwise)."""

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logprobs: Literal[None, False, 0] = None
    user: str | None = None
    return_token_ids: bool = False
    return_routing: bool = False
    ignore_eos: bool = False
    """vLLM's extension: generate past the end-of-sequence token, up to ``max_tokens`` (load tests use it, so that
    every model answers at the same length)."""

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(strings)}")
        if any(not s for s in strings):
            raise ValueError("a stop string may not be empty")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: str | list[str] | list[int]
    max_tokens: Annotated[int, Field(ge=1)] = 16
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) and len(prompt) != 1:
            raise ValueError(f"one prompt per request: got a list of {len(prompt)} prompts")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt is empty; give text or at least one token id")
        return prompt


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Choice(BaseModel):
    """What every choice has, and the optional per-choice extras (omitted from the JSON when not asked for)."""

    index: int = 0
    finish_reason: str | None
    logprobs: None = None
    token_ids: list[int] | None = None
    routing: list[dict[str, Any]] | None = None


class _Response(BaseModel):
    """What every response has: its id, when it was made and the model that made it."""

    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class CompletionChoice(_Choice):
    text: str


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "radargate"
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready, without the optional extensions nobody asked for (``None`` token ids and routing)."""
    data = model.model_dump()
    for choice in data.get("choices", []):
        for key in ("token_ids", "routing"):
            if choice.get(key) is None:
                choice.pop(key, None)
    return data
