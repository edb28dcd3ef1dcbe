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
status ``prompt_too_long``. A conversation with no assistant content gets ``no_response``. The turns to
keep are searched from the end (the token count falls as turns are dropped), and a conversation with far
more characters than ``max_tokens`` tokens hold is never rendered whole: the cost follows the turns kept,
not the conversation's length (so a template refusing a turn that is dropped anyway is not asked about it).

Bytes: ``n_bytes`` counts the UTF-8 bytes of the assistant turns' characters covered by scored tokens,
the template's special tokens (``<|im_end|>``) excluded: the content a model of another tokenizer and
template would be scored on too.

IFD (``ifd=True``): each assistant turn's scored tokens are also scored *without their prompt*, behind
the template's assistant header alone: the tokens its generation prompt renders (``<|im_start|>assistant\n``
in ChatML), taken from the conversation's own ids, so both passes score the very same response token
ids, the first one included. A template without a header (the reply follows the user turn directly)
puts the tokenizer's BOS there instead; a row where neither exists, or where the turns' tokens do not
add up to the target tokens, gets the status ``ifd_unmatched``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import numpy as np

from hardfocus.contracts.scores import ERROR_PREFIX, Status
from hardfocus.errors import HardfocusError
from hardfocus.sample_format import Message

ASSISTANT = "assistant"
SYSTEM = "system"


@dataclass
class Layout:
    """Where a rendering's tokens and turns lie, in characters of ``text``."""

    text: str
    offsets: np.ndarray  # (T, 2): the characters each token covers
    spans: list[tuple[int, int]]  # each assistant turn
    headers: list[int] | None = None  # where each turn's assistant header starts (with ``ifd`` only)


@dataclass
class IfdTurn:
    """One assistant turn for the unconditioned pass: ``prefix`` ids, then ``input_ids[start:stop]``, all scored."""

    prefix: np.ndarray
    start: int
    stop: int


@dataclass
class Encoded:
    """One conversation: token ids, the target mask (True = a scored assistant token), flags, bytes scored,
    and (with ``ifd``) its turns for the unconditioned pass."""

    input_ids: np.ndarray
    target: np.ndarray
    truncated: bool = False
    status: str | None = None
    n_bytes: int = 0
    ifd_turns: list[IfdTurn] | None = None
    layout: Layout | None = field(default=None, repr=False)


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


def template_sha256(template: str | None, tokenizer) -> str:
    """The sha256 of the chat template that renders conversations: ``template`` (the text :func:`load_chat_template`
    returns), else the tokenizer's own. Part of every identity that conversations' token ids depend on: a template
    file edited in place is another template."""
    return hashlib.sha256(str(template or tokenizer.chat_template).encode()).hexdigest()


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
    template: str | None = None, ifd: bool = False,
) -> list[Encoded]:
    """Encode each conversation (rows with a status already set are passed through with that status)."""
    out = []
    for messages, st in zip(conversations, status):
        if st is not None or messages is None:
            out.append(_empty(st or Status.EMPTY.value))
        else:
            out.append(encode_conversation(tokenizer, messages, max_tokens, template, ifd))
    return out


def encode_conversation(
    tokenizer, messages: list[Message], max_tokens: int, template: str | None = None, ifd: bool = False
) -> Encoded:
    """Render, tokenise and mask one conversation, truncated as the module docstring says; count its bytes."""
    encoded = _encode_truncated(tokenizer, messages, max_tokens, template, ifd)
    if encoded.status is not None:
        return encoded
    encoded.n_bytes = _scored_bytes(encoded, _special_ids(tokenizer))
    if ifd:
        encoded.ifd_turns = _ifd_turns(encoded, tokenizer.bos_token_id)
        if encoded.ifd_turns is None:
            return Encoded(np.zeros(0, np.int32), np.zeros(0, bool), encoded.truncated, Status.IFD_UNMATCHED.value)
    encoded.layout = None  # its text is not needed any more
    return encoded


def _encode_truncated(
    tokenizer, messages: list[Message], max_tokens: int, template: str | None, ifd: bool
) -> Encoded:
    if not any(m["role"] == ASSISTANT and m["content"].strip() for m in messages):
        return _empty(Status.NO_RESPONSE.value)
    system = messages[:1] if messages[0]["role"] == SYSTEM else []
    body = messages[len(system):]
    last_assistant = max(i for i, m in enumerate(body) if m["role"] == ASSISTANT)
    starts = [i for i in _turn_starts(body) if i <= last_assistant]
    try:
        if len(starts) == 1 or _may_fit(messages, max_tokens):
            encoded = _encode(tokenizer, system + body, template, ifd)
            if len(encoded.input_ids) > max_tokens and len(starts) > 1:
                encoded = _drop_leading_turns(tokenizer, system, body, starts, max_tokens, template, ifd, too_long=0)
        else:  # far too long to render whole: only the turns that can fit are rendered
            encoded = _drop_leading_turns(tokenizer, system, body, starts, max_tokens, template, ifd, too_long=-1)
    except _NotIncremental as exc:
        return _empty(f"{ERROR_PREFIX}{exc}")
    except jinja2.TemplateError as exc:  # e.g. a template's raise_exception('roles must alternate')
        return _empty(f"{ERROR_PREFIX}the chat template refused this conversation: {exc}")
    if len(encoded.input_ids) > max_tokens:
        encoded = Encoded(encoded.input_ids[:max_tokens], encoded.target[:max_tokens], truncated=True,
                          layout=encoded.layout)
        encoded.target[:1] = False
        if not encoded.target.any():
            return Encoded(encoded.input_ids, encoded.target, True, Status.PROMPT_TOO_LONG.value)
    return encoded


# A token rarely covers more characters than this (hardfocus.tokenize cuts texts with a bound of 32): a conversation
# with more characters than this many per wanted token is not rendered whole, as it is going to lose leading turns.
_CHARS_PER_TOKEN_GUESS = 16


def _may_fit(messages: list[Message], max_tokens: int) -> bool:
    """Whether the conversation is short enough, in characters, that it may fit in ``max_tokens`` tokens."""
    chars = 0
    limit = _CHARS_PER_TOKEN_GUESS * max_tokens
    for m in messages:
        chars += len(m["content"]) + len(m["role"]) + 4  # the template's markers around each message count too
        if chars > limit:
            return False
    return True


def _drop_leading_turns(
    tokenizer, system: list[Message], body: list[Message], starts: list[int], max_tokens: int, template: str | None,
    ifd: bool = False, too_long: int = 0,
) -> Encoded:
    """The conversation without the fewest leading turns that makes it fit (or with only its last turn); flagged
    ``truncated`` unless that is none (``starts[0]``).

    ``too_long``: the most turns dropped (an index into ``starts``) known not to fit, -1 for none known. The token
    count falls as more turns are dropped, so the search goes from the end: the last turn, the last 2, 4, 8, ...,
    then bisection between the last that fits and the first that does not. Only about twice the turns that fit are
    ever rendered, however long the conversation is.
    """

    def encode(k: int) -> Encoded:
        return _encode(tokenizer, system + body[starts[k]:], template, ifd)

    hi = len(starts) - 1  # invariant, once the last turn fits: dropping starts[hi:] fits
    best = encode(hi)
    lo = too_long
    if len(best.input_ids) <= max_tokens:
        step = 1
        while hi - lo > 1:  # gallop towards the start
            k = max(hi - step, lo + 1)
            candidate = encode(k)
            if len(candidate.input_ids) > max_tokens:
                lo = k
                break
            best, hi, step = candidate, k, step * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            candidate = encode(mid)
            if len(candidate.input_ids) <= max_tokens:
                best, hi = candidate, mid
            else:
                lo = mid
    best.truncated = hi > 0
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


def header_starts(tokenizer, messages: list[Message], text: str, template: str | None = None) -> list[int] | None:
    """Where the assistant header of every assistant turn starts in ``text``, the whole rendering: the end of
    ``messages[:i]`` rendered without the generation prompt. None when that is not a prefix of ``text``."""
    starts = []
    for i, m in enumerate(messages):
        if m["role"] == ASSISTANT:
            prev = _apply(tokenizer, messages[:i], template) if i else ""
            if not text.startswith(prev):
                return None
            starts.append(len(prev))
    return starts


def _encode(tokenizer, messages: list[Message], template: str | None, ifd: bool = False) -> Encoded:
    text, spans = render(tokenizer, messages, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    target = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        target |= (offsets[:, 1] > a) & (offsets[:, 0] < b)
    target[:1] = False
    headers = header_starts(tokenizer, messages, text, template) if ifd else None
    return Encoded(np.asarray(enc["input_ids"], dtype=np.int32), target, layout=Layout(text, offsets, spans, headers))


def _ifd_turns(encoded: Encoded, bos_id: int | None) -> list[IfdTurn] | None:
    """Each kept assistant turn's scored tokens and what they are scored behind without the prompt: the
    turn's header tokens (those from where the header starts up to the first scored token), else BOS.

    None when the turns cannot reproduce the conditioned targets exactly.
    """
    layout, target = encoded.layout, encoded.target
    if layout.headers is None:
        return None
    n = len(encoded.input_ids)
    offsets, index = layout.offsets[:n], np.arange(n)
    turns = []
    for (a, b), h in zip(layout.spans, layout.headers):
        scored = np.flatnonzero(target & (offsets[:, 1] > a) & (offsets[:, 0] < b))
        if scored.size == 0:  # cut off by truncation
            continue
        start, stop = int(scored[0]), int(scored[-1]) + 1
        header = np.flatnonzero((offsets[:, 0] >= h) & (index < start))
        if header.size and header[0] < start:
            prefix = encoded.input_ids[header[0] : start]
        elif bos_id is not None:
            prefix = np.asarray([bos_id], dtype=np.int32)
        else:
            return None
        turns.append(IfdTurn(prefix, start, stop))
    covered = np.zeros(n, dtype=np.int32)
    for t in turns:
        covered[t.start : t.stop] += 1
    if not np.array_equal(covered, target.astype(np.int32)):  # a gap, or a token shared by two turns
        return None
    return turns


@lru_cache(maxsize=8)
def _special_ids(tokenizer) -> np.ndarray:
    """Ids of the tokenizer's special tokens (the template's markers, BOS/EOS): they cover no content bytes."""
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return np.asarray(sorted(ids), dtype=np.int64)


def _scored_bytes(encoded: Encoded, special: np.ndarray) -> int:
    """UTF-8 bytes of the assistant turns' characters that the scored, non-special tokens cover."""
    layout = encoded.layout
    n = len(encoded.input_ids)
    tokens = encoded.target & ~np.isin(encoded.input_ids, special)
    covered = char_mask(len(layout.text), layout.offsets[:n][tokens])
    in_turns = char_mask(len(layout.text), np.asarray(layout.spans, dtype=np.int64).reshape(-1, 2))
    return int(char_bytes(layout.text)[covered & in_turns].sum())


def char_mask(length: int, ranges: np.ndarray) -> np.ndarray:
    """Boolean mask of ``length`` characters: True inside any of the (start, stop) ``ranges``."""
    delta = np.zeros(length + 1, dtype=np.int64)
    np.add.at(delta, ranges[:, 0], 1)
    np.add.at(delta, ranges[:, 1], -1)
    return np.cumsum(delta[:-1]) > 0


def char_bytes(text: str) -> np.ndarray:
    """The UTF-8 length of every character of ``text`` (a lone surrogate counts 3, as surrogatepass writes it)."""
    code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return 1 + (code >= 0x80).astype(np.int64) + (code >= 0x800) + (code >= 0x10000)


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
