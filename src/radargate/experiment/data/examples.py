"""The example types every data source produces, and how each becomes the token sequence trained on.

Three kinds of row, whatever the source (BIG-bench, GSM8K, reasoning-gym, your own files):

- :class:`MCExample`: a question, its choices and the right one; the prompt is BIG-bench's zero-shot format
  (:class:`PromptFormat`), scored by per-choice log-likelihood (accuracy) and the right choice's answer NLL.
- :class:`CompletionExample`: a prompt and the completion trained on (plus the end-of-sequence token), scored by
  answer NLL and teacher-forced exact match (``radargate.experiment.evaluate``).
- :class:`ChatExample`: a conversation trained on its assistant turns, scored by answer NLL.

Every example has a ``task`` (the source's name), an ``id`` (a content hash, so duplicates are found) and an
``input`` (what decides its hash split, :mod:`radargate.experiment.data.splits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from radargate.experiment.data.batching import EncodedSequence, encode_pair

__all__ = ["SPLITS", "ChatExample", "CompletionExample", "Example", "MCExample", "PromptFormat", "assistant_spans",
           "encode_example"]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice example; ``prompt + choices[answer]`` is the right completion."""

    task: str
    id: str
    input: str
    prompt: str
    choices: tuple[str, ...]
    target_scores: tuple[float, ...]
    answer: int
    origin: str = ""
    """Where a row of your own data came from (``file row 3``), for error messages; empty for BIG-bench."""

    @property
    def family(self) -> str:
        """The top-level task (``logical_deduction`` for ``logical_deduction/three_objects``)."""
        return self.task.split("/", 1)[0]

    def scoring_pairs(self) -> tuple[str, tuple[str, ...]]:
        """(context, continuations) with the prompt's trailing whitespace moved onto each choice.

        ``context + continuations[i] == prompt + choices[i]``; subword tokenizers encode ``"A:" + " Yes"``
        far more naturally than ``"A: " + "Yes"``.
        """
        context = self.prompt.rstrip()
        space = self.prompt[len(context) :]
        return context, tuple(space + choice for choice in self.choices)


@dataclass(frozen=True)
class PromptFormat:
    """The prompt fields of a task.json, with BIG-bench's defaults (see the module docstring)."""

    task_prefix: str = ""
    input_prefix: str = "\nQ: "
    choice_prefix: str = "\n  choice: "
    output_prefix: str = "\nA: "
    append_choices: bool = True

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> PromptFormat:
        """Read the fields from a parsed task.json."""
        default = cls()
        return cls(
            task_prefix=str(task.get("task_prefix", default.task_prefix)),
            input_prefix=str(task.get("example_input_prefix", default.input_prefix)),
            choice_prefix=str(task.get("choice_prefix", default.choice_prefix)),
            output_prefix=str(task.get("example_output_prefix", default.output_prefix)),
            append_choices=bool(task.get("append_choices_to_input", default.append_choices)),
        )

    def render(self, text: str, choices: Sequence[str]) -> str:
        """The zero-shot prompt for one example."""
        body = text + (self.choice_prefix + self.choice_prefix.join(choices) if self.append_choices else "")
        return (self.task_prefix + self.input_prefix + body + self.output_prefix).lstrip()


@dataclass(frozen=True)
class CompletionExample:
    """A prompt and the completion trained on; scored by the completion's mean negative log-likelihood."""

    task: str
    id: str
    input: str
    """What decides the hash split: the prompt."""
    origin: str
    prompt: str
    completion: str

    def encode(self, tokenizer) -> EncodedSequence:
        prompt_ids = tokenizer(self.prompt, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(self.completion, add_special_tokens=False)["input_ids"]
        answer_ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return EncodedSequence(tuple(prompt_ids + answer_ids), (False,) * len(prompt_ids) + (True,) * len(answer_ids))


@dataclass(frozen=True)
class ChatExample:
    """A conversation trained on its assistant turns; scored by their mean negative log-likelihood."""

    task: str
    id: str
    input: str
    """What decides the hash split: the turns before the first assistant turn."""
    origin: str
    messages: tuple[tuple[str, str], ...]
    """(role, content) per turn."""

    def encode(self, tokenizer) -> EncodedSequence:
        """The rendered conversation, tokenised once, with the tokens inside assistant spans marked."""
        text, spans = assistant_spans(tokenizer, self.messages, self.origin)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = tuple(any(start <= first < end for start, end in spans) for first, _ in encoded["offset_mapping"])
        return EncodedSequence(tuple(encoded["input_ids"]), mask)


def assistant_spans(tokenizer, messages: Sequence[tuple[str, str]], origin: str) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's rendering of ``messages`` and the character spans of the assistant turns.

    Turn ``i``'s span starts where the rendering of the turns before it, with the generation prompt, ends, and
    runs to the end of the rendering up to turn ``i`` (trailing whitespace aside): the assistant's content and
    the end-of-turn marker, the same text that generation from that prompt should produce.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{origin}: a chat source needs a tokenizer with a chat template; this model's has none")
    turns = [{"role": role, "content": content} for role, content in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    spans = []
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(turns[:index], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(turns[: index + 1], tokenize=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ValueError(f"{origin}: the tokenizer's chat template does not render the turns before an "
                             "assistant turn as a prefix of the conversation, so its tokens cannot be found")
        spans.append((len(prompt), len(upto.rstrip())))
    return text, spans


Example = MCExample | CompletionExample | ChatExample


def encode_example(tokenizer, example: Example, max_length: int) -> EncodedSequence:
    """The sequence trained on: a multiple-choice prompt with its right choice (cut as BIG-bench's), or a
    completion or conversation whole."""
    if isinstance(example, MCExample):
        context, continuations = example.scoring_pairs()
        return encode_pair(tokenizer, context, continuations[example.answer], max_length)
    return example.encode(tokenizer)
