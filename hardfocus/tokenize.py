"""Samples to token ids, once, with truncation flagged and degenerate samples given a status.

Plain text here; conversations (rendered with the chat template, response-only targets) in
:mod:`hardfocus.chat`. :func:`tokenize_block` picks the one the input format needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardfocus.chat import IfdTurn, encode_conversations
from hardfocus.contracts.scores import Status
from hardfocus.readers import RowBlock

# A token of a byte-level BPE rarely covers more than a few dozen characters, so cutting the text
# at this many characters per wanted token avoids tokenising a 5 MB document in full; when the cut
# text does not yield clearly more than max_tokens tokens, the full text is tokenised instead.
_CHARS_PER_TOKEN_BOUND = 32
_CUT_MARGIN_TOKENS = 16


@dataclass
class Tokenized:
    """Token ids per sample (int32), whether each was truncated, and its status (None = scoreable).

    ``targets`` (conversations only) holds each sample's mask of scored target tokens; None means
    every token but the first, as for plain text. ``n_bytes``: the UTF-8 bytes the kept tokens cover
    (the text; a conversation's assistant turns). ``ifd_turns``: see :mod:`hardfocus.chat`.
    """

    input_ids: list[np.ndarray]
    truncated: list[bool]
    status: list[str | None]
    targets: list[np.ndarray] | None = None
    n_bytes: list[int] | None = None
    ifd_turns: list[list[IfdTurn] | None] | None = None


def tokenize_block(
    tokenizer, block: RowBlock, fmt: str, max_tokens: int, add_special_tokens: bool = True,
    chat_template: str | None = None, ifd: bool = False,
) -> Tokenized:
    """Tokenise a block of rows read in format ``fmt`` (text, prompt_response or messages); ``ifd``
    (conversations) also lays out each turn for the unconditioned pass."""
    if fmt == "text":
        return tokenize_texts(tokenizer, block.values, block.status, max_tokens, add_special_tokens)
    encoded = encode_conversations(tokenizer, block.values, block.status, max_tokens, chat_template, ifd)
    return Tokenized(
        input_ids=[e.input_ids for e in encoded],
        truncated=[e.truncated for e in encoded],
        status=[e.status for e in encoded],
        targets=[e.target for e in encoded],
        n_bytes=[e.n_bytes for e in encoded],
        ifd_turns=[e.ifd_turns for e in encoded] if ifd else None,
    )


def tokenize_texts(
    tokenizer, texts: list[str | None], status: list[str | None], max_tokens: int, add_special_tokens: bool = True
) -> Tokenized:
    """Tokenise ``texts`` (rows with a status already set are passed through untouched).

    Documents longer than ``max_tokens`` keep their first ``max_tokens`` tokens and are flagged
    ``truncated``; empty or whitespace-only texts get ``empty``, fewer than two tokens ``too_short``.
    """
    status, todo = text_statuses(texts, status)
    limit = max_tokens * _CHARS_PER_TOKEN_BOUND
    cut = [texts[i][:limit] for i in todo]
    encoded = tokenizer(cut, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"] if cut else []
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int32) for _ in texts]
    truncated = [False] * len(texts)
    n_bytes = [0] * len(texts)
    cut_docs: dict[int, tuple[str, list[int]]] = {}  # truncated: the text tokenised, the kept tokens
    for i, text, toks in zip(todo, cut, encoded):
        if len(texts[i]) > limit and len(toks) <= max_tokens + _CUT_MARGIN_TOKENS:
            text = texts[i]
            toks = tokenizer(text, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]
        if len(toks) > max_tokens:
            toks, truncated[i] = toks[:max_tokens], True
            cut_docs[i] = (text, toks)
        else:
            n_bytes[i] = len(texts[i].encode("utf-8"))
        ids[i] = np.asarray(toks, dtype=np.int32)
        if len(toks) < 2:
            status[i] = Status.TOO_SHORT.value
    for i, count in zip(cut_docs, _kept_bytes(tokenizer, list(cut_docs.values()), add_special_tokens)):
        n_bytes[i] = count
    return Tokenized(ids, truncated, status, n_bytes=n_bytes)


def text_statuses(texts: list[str | None], status: list[str | None]) -> tuple[list[str | None], list[int]]:
    """Each text's status before tokenising (``empty``: null or whitespace only; ``invalid_utf8``; a status already
    set passes through), and the indices of the texts left to tokenise."""
    status = list(status)
    todo = []
    for i, text in enumerate(texts):
        if status[i] is not None:
            continue
        if text is None or not text.strip():
            status[i] = Status.EMPTY.value
        elif not _encodable(text):
            status[i] = Status.INVALID_UTF8.value  # lone surrogates from a JSON "\ud800" escape
        else:
            todo.append(i)
    return status, todo


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kept_bytes(tokenizer, docs: list[tuple[str, list[int]]], add_special_tokens: bool) -> list[int]:
    """UTF-8 bytes of each truncated document's text up to the end of its last kept token.

    A fast tokenizer's offsets say where that is (one batched call); a slow one's decoded kept tokens
    are measured instead.
    """
    if not docs:
        return []
    if not getattr(tokenizer, "is_fast", False):
        return [len(tokenizer.decode(kept, skip_special_tokens=True).encode("utf-8")) for _, kept in docs]
    offsets = tokenizer([text for text, _ in docs], add_special_tokens=add_special_tokens,
                        return_offsets_mapping=True, return_attention_mask=False)["offset_mapping"]
    ends = [max((stop for _, stop in spans[: len(kept)]), default=0) for spans, (_, kept) in zip(offsets, docs)]
    return [len(text[:end].encode("utf-8")) for end, (text, _) in zip(ends, docs)]


