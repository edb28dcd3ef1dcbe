"""Conversations to token ids and a response-only target mask, built from the chat template's own rendering.

The mask comes from the rendering, never from searching the text for the response: for every
assistant message ``i`` the template renders ``messages[:i]`` with the generation prompt (where the
reply starts) and ``messages[:i+1]`` (where the turn ends); both must be prefixes of the whole
rendering. The turn's characters run from the first to the second, trailing whitespace excluded, so
the end-of-turn token (``<|im_end|>`` in ChatML) is a target and the newline after it is not. A token
is a target when any of its characters lies inside an assistant turn (the tokenizer's offsets say
which), the rule transformers applies to templates with ``{% generation %}`` markers.

Truncation: a conversation longer than ``max_tokens`` keeps its system prompt and drops whole leading
turns (a turn starts at a user message that follows an assistant one) until it fits. When even the
last turn does not fit, it is cut at ``max_tokens``; if no assistant token is left the row gets the
status ``prompt_too_long``. A conversation with no assistant content gets ``no_response``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from scoring.errors import HardfocusError
from scoring.schema import ERROR_PREFIX, Status
from scoring.sources import Message

ASSISTANT = "assistant"
SYSTEM = "system"


@dataclass
class Encoded:
    """One conversation: token ids, the target mask (True = a scored assistant token), flags."""

    input_ids: np.ndarray
    target: np.ndarray
    truncated: bool = False
    status: str | None = None


def is_inline_template(value: str) -> bool:
    """Whether a ``chat_template`` setting is the Jinja template itself rather than the path of a file."""
    return "{%" in value or "{{" in value


def load_chat_template(value: str | None) -> str | None:
    """A ``chat_template`` setting as template text: a Jinja template given inline, or a file holding one."""
    if value is None or is_inline_template(value):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise HardfocusError(f"chat template file '{value}' does not exist (give a Jinja file, or the template itself)")
    return path.read_text(encoding="utf-8")


def check_chat_tokenizer(tokenizer, template: str | None) -> None:
    """Refuse, with the fix in the message, a tokenizer that cannot render or locate conversations."""
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise HardfocusError(
            "this model's tokenizer has no chat template, so conversations cannot be rendered; "
            "give one with --chat-template FILE (a Jinja template such as ChatML)"
        )
    if not getattr(tokenizer, "is_fast", True):
        raise HardfocusError("conversations need a fast (Rust) tokenizer for token offsets; this one is a slow tokenizer")


def encode_conversations(
    tokenizer, conversations: list[list[Message] | None], status: list[str | None], max_tokens: int,
    template: str | None = None,
) -> list[Encoded]:
    """Encode each conversation (rows with a status already set are passed through with that status)."""
    out = []
    for messages, st in zip(conversations, status):
        if st is not None or messages is None:
            out.append(_empty(st or Status.EMPTY.value))
        else:
            out.append(encode_conversation(tokenizer, messages, max_tokens, template))
    return out


def encode_conversation(tokenizer, messages: list[Message], max_tokens: int, template: str | None = None) -> Encoded:
    """Render, tokenise and mask one conversation, truncated as the module docstring says."""
    if not any(m["role"] == ASSISTANT and m["content"].strip() for m in messages):
        return _empty(Status.NO_RESPONSE.value)
    system = messages[:1] if messages[0]["role"] == SYSTEM else []
    body = messages[len(system):]
    last_assistant = max(i for i, m in enumerate(body) if m["role"] == ASSISTANT)
    starts = [i for i in _turn_starts(body) if i <= last_assistant]
    try:
        encoded = _encode(tokenizer, system + body, template)
        if len(encoded.input_ids) > max_tokens and len(starts) > 1:
            encoded = _drop_leading_turns(tokenizer, system, body, starts, max_tokens, template)
    except _NotIncremental as exc:
        return _empty(f"{ERROR_PREFIX}{exc}")
    except jinja2.TemplateError as exc:  # e.g. a template's raise_exception('roles must alternate')
        return _empty(f"{ERROR_PREFIX}the chat template refused this conversation: {exc}")
    if len(encoded.input_ids) > max_tokens:
        encoded = Encoded(encoded.input_ids[:max_tokens], encoded.target[:max_tokens], truncated=True)
        encoded.target[:1] = False
        if not encoded.target.any():
            return Encoded(encoded.input_ids, encoded.target, True, Status.PROMPT_TOO_LONG.value)
    return encoded


def _drop_leading_turns(
    tokenizer, system: list[Message], body: list[Message], starts: list[int], max_tokens: int, template: str | None
) -> Encoded:
    """The conversation without the fewest leading turns that makes it fit (or with only its last turn).

    Binary search over how many turns to drop: the token count falls as more turns are dropped.
    """
    best = _encode(tokenizer, system + body[starts[-1]:], template)
    lo, hi = 1, len(starts) - 1  # invariant, once the last turn fits: dropping starts[hi:] fits
    if len(best.input_ids) <= max_tokens:
        while lo < hi:
            mid = (lo + hi) // 2
            candidate = _encode(tokenizer, system + body[starts[mid]:], template)
            if len(candidate.input_ids) <= max_tokens:
                best, hi = candidate, mid
            else:
                lo = mid + 1
    best.truncated = True
    return best


def render(tokenizer, messages: list[Message], template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The template's rendering of ``messages`` and the character span of every assistant turn."""
    text = _apply(tokenizer, messages, template)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != ASSISTANT:
            continue
        before = _apply(tokenizer, messages[:i], template, generation_prompt=True)
        through = _apply(tokenizer, messages[: i + 1], template)
        if not (text.startswith(before) and text.startswith(through) and len(through) >= len(before)):
            raise _NotIncremental(
                f"the chat template renders the first {i} messages differently inside the whole conversation, "
                "so the assistant turn cannot be located"
            )
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _encode(tokenizer, messages: list[Message], template: str | None) -> Encoded:
    text, spans = render(tokenizer, messages, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    target = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        target |= (offsets[:, 1] > a) & (offsets[:, 0] < b)
    target[:1] = False
    return Encoded(np.asarray(enc["input_ids"], dtype=np.int32), target)


def _apply(tokenizer, messages: list[Message], template: str | None, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def _turn_starts(body: list[Message]) -> list[int]:
    """Indices where a turn starts: the first message, and each non-assistant message after an assistant one."""
    return [i for i, m in enumerate(body) if i == 0 or (m["role"] != ASSISTANT and body[i - 1]["role"] == ASSISTANT)]


def _empty(status: str) -> Encoded:
    return Encoded(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool), False, status)


class _NotIncremental(Exception):
    """The template's rendering of a prefix is not a prefix of the whole rendering."""
