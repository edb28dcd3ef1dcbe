"""Long documents in windows (``--long-documents windows``): every token of a text scored once, a row per window.

A document's tokens are its tokenisation with the tokenizer's special tokens (``prefix`` = BOS where it adds one,
then the body, then any end token). Windows cut them into consecutive runs that cover each token exactly once:

- window 0 is the first ``max_tokens`` tokens, as truncation would keep them (BOS included);
- window k >= 1 owns the next ``max_tokens - len(prefix) - context`` tokens and is read as
  ``prefix + the context tokens before it + its own tokens``: a training sequence of at most ``max_tokens``
  tokens, starting as the model saw sequences in pre-training (with its BOS, when the tokenizer adds one).

Scored (and trained on) are the window's own tokens, each predicted from the tokens before it in the sequence.
Position 0 predicts nothing, so a window with no prefix (no BOS, ``context`` 0) cannot score its first own token:
with such a tokenizer (SmolLM2's adds none) give ``window_context >= 1`` to score every token but the document's
first (transformers#18887 is this pitfall). ``prefix_tokens`` is the count of leading tokens a window reads but
does not own (0 in window 0), so ``input_ids[prefix_tokens:]`` of the windows in order, after window 0's whole
``input_ids``, are the document's tokenisation.

Tokenising is linear in the document: a text of more than ``PIECE_CHARS`` characters is tokenised in pieces,
each read with ``OVERLAP_CHARS`` of text on either side, and the tokens of two neighbouring pieces must agree
where they overlap (else the document is tokenised whole, which is always exact).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hardfocus.contracts.scores import Status
from hardfocus.errors import HardfocusError
from hardfocus.tokenize import text_statuses

log = logging.getLogger(__name__)

PIECE_CHARS = 1 << 16  # characters tokenised at once in a long text
OVERLAP_CHARS = 2048  # text read on either side of a piece's own range; their tokens must agree with the neighbour's
_CUT_SEARCH_TOKENS = 256  # how far back from a piece's end to look for a cut at a word boundary


@dataclass
class Windowed:
    """The windows of a block of texts, flat, in document order; ``doc`` is each window's index in the block.

    A text that cannot be scored (empty, bad UTF-8, a status already set) is one window with its status.
    ``char_start``/``char_stop``: the characters of the text the window's own tokens cover (from the tokenizer's
    offsets); ``n_bytes``: their UTF-8 bytes.
    """

    doc: list[int] = field(default_factory=list)
    window: list[int] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    input_ids: list[np.ndarray] = field(default_factory=list)
    prefix_tokens: list[int] = field(default_factory=list)
    char_start: list[int] = field(default_factory=list)
    char_stop: list[int] = field(default_factory=list)
    n_bytes: list[int] = field(default_factory=list)
    status: list[str | None] = field(default_factory=list)

    def add(self, doc: int, window: int, windows: int, ids: np.ndarray, prefix: int, chars: tuple, n_bytes: int,
            status: str | None) -> None:
        self.doc.append(doc)
        self.window.append(window)
        self.windows.append(windows)
        self.input_ids.append(ids)
        self.prefix_tokens.append(prefix)
        self.char_start.append(chars[0])
        self.char_stop.append(chars[1])
        self.n_bytes.append(n_bytes)
        self.status.append(status)


def window_texts(tokenizer, texts: list[str | None], status: list[str | None], max_tokens: int, context: int = 0,
                 add_special_tokens: bool = True) -> Windowed:
    """Cut every text of a block into windows (see the module docstring); rows with a status pass through."""
    check_windows_tokenizer(tokenizer)
    prefix, suffix = special_layout(tokenizer, add_special_tokens)
    own_first, own_later = max_tokens - len(prefix), max_tokens - len(prefix) - context
    if own_later < 1:
        raise HardfocusError(
            f"a window of max_tokens {max_tokens} holds the tokenizer's {len(prefix)} leading special tokens and "
            f"window_context {context}: no room for a token of its own; raise max_tokens or lower window_context"
        )
    status, todo = text_statuses(texts, status)
    bodies = dict(zip(todo, encode_bodies(tokenizer, [texts[i] for i in todo])))
    out = Windowed()
    suffix_ids = np.asarray(suffix, dtype=np.int32)
    prefix_ids = np.asarray(prefix, dtype=np.int32)
    for i, text in enumerate(texts):
        if i not in bodies:
            out.add(i, 0, 1, np.zeros(0, np.int32), 0, (0, len(text) if isinstance(text, str) else 0), 0, status[i])
            continue
        body_ids, body_starts = bodies.pop(i)
        ids = np.concatenate([body_ids, suffix_ids])
        starts = np.concatenate([body_starts, np.full(len(suffix), len(text))])
        _add_document(out, i, text, ids, starts, prefix_ids, own_first, own_later, context)
    return out


def _add_document(out: Windowed, doc: int, text: str, ids: np.ndarray, starts: np.ndarray, prefix: np.ndarray,
                  own_first: int, own_later: int, context: int) -> None:
    """Append the windows of one document: ``ids``/``starts`` are its tokens after the prefix, with their offsets."""
    bounds = [0, *range(own_first, len(ids), own_later), len(ids)]  # own tokens of window k: ids[bounds[k]:bounds[k+1]]
    n = len(bounds) - 1
    chars = [0] + [int(min(starts[b], len(text))) for b in bounds[1:-1]] + [len(text)]
    chars = np.maximum.accumulate(chars).tolist()  # offsets of trimmed tokens may step back; keep a partition
    for k in range(n):
        lo, hi = bounds[k], bounds[k + 1]
        if k == 0:
            seq, lead = np.concatenate([prefix, ids[:hi]]), 0
        else:
            seq, lead = np.concatenate([prefix, ids[lo - context : lo], ids[lo:hi]]), len(prefix) + context
        span = (chars[k], chars[k + 1])
        n_bytes = len(text[span[0] : span[1]].encode("utf-8"))
        scored = len(seq) - max(lead, 1)
        out.add(doc, k, n, seq.astype(np.int32, copy=False), lead, span, n_bytes,
                None if scored > 0 else Status.TOO_SHORT.value)


@lru_cache(maxsize=16)
def _layout(tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for j in range(len(full) - len(bare) + 1):
        if full[j : j + len(bare)] == bare:
            return tuple(full[:j]), tuple(full[j + len(bare) :])
    raise HardfocusError(
        "this tokenizer's special tokens are not a prefix and a suffix of the text's tokens, so a document cannot be "
        "cut into windows; score with --no-add-special-tokens or --long-documents truncate"
    )


def special_layout(tokenizer, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text's tokens (BOS, EOS), or none."""
    if not add_special_tokens:
        return [], []
    try:
        before, after = _layout(tokenizer)
    except TypeError:  # an unhashable tokenizer
        before, after = _layout.__wrapped__(tokenizer)
    return list(before), list(after)


def check_windows_tokenizer(tokenizer) -> None:
    """Windows need a fast tokenizer: its offsets say which characters (and bytes) each window covers; a slow one's
    decoded tokens lose the bytes of a character split between two windows."""
    if not getattr(tokenizer, "is_fast", False):
        raise HardfocusError(
            f"--long-documents windows needs a fast tokenizer (for token offsets), and {type(tokenizer).__name__} is "
            "a slow one: convert it (transformers' convert_slow_tokenizer) or score with --long-documents truncate"
        )


def encode_bodies(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each text's tokens without special tokens (int32) and each token's first character (int64); texts up to
    ``PIECE_CHARS`` in one batched call, longer ones in pieces."""
    out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(texts)  # type: ignore[list-item]
    short = [i for i, t in enumerate(texts) if len(t) <= PIECE_CHARS]
    if short:
        enc = tokenizer([texts[i] for i in short], add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False)
        for i, ids, offsets in zip(short, enc["input_ids"], enc["offset_mapping"]):
            out[i] = (np.asarray(ids, dtype=np.int32), _starts(offsets))
    for i, text in enumerate(texts):
        if out[i] is None:
            out[i] = encode_long(tokenizer, text)
    return out


def _starts(offsets) -> np.ndarray:
    return np.asarray([s for s, _ in offsets], dtype=np.int64).reshape(-1)


def _encode(tokenizer, text: str, at: int = 0) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    return np.asarray(enc["input_ids"], dtype=np.int32), _starts(enc["offset_mapping"]) + at


def encode_long(tokenizer, text: str, piece: int = PIECE_CHARS, overlap: int = OVERLAP_CHARS
                ) -> tuple[np.ndarray, np.ndarray]:
    """A long text's tokens, tokenised ``piece`` characters at a time (memory and time linear in the text).

    Each piece is read from ``overlap`` characters before its first own token, so the tokenizer is in the state
    the whole text puts it in; a piece's own tokens end at a token start ``overlap`` characters before its end,
    preferably at a word boundary. The next piece must find a token starting exactly there and the same tokens as
    this one over the next ``overlap / 2`` characters; where it does not (a word of thousands of characters, a
    tokenizer with a wider reach) the text is tokenised whole.
    """
    ids_out, starts_out = [], []
    pos, check = 0, None  # check: this piece's tokens from the cut on, which the next piece must reproduce
    while True:
        lo, hi = max(0, pos - overlap), min(len(text), pos + piece)
        ids, starts = _encode(tokenizer, text[lo:hi], lo)
        first = int(np.searchsorted(starts, pos))
        if first >= len(starts) or starts[first] != pos or (check is not None and not _agrees(check, ids, starts, first)):
            log.debug("a text of %d characters did not tokenise alike in pieces: tokenising it whole", len(text))
            return _encode(tokenizer, text)
        if hi == len(text):
            ids_out.append(ids[first:])
            starts_out.append(starts[first:])
            return np.concatenate(ids_out), np.concatenate(starts_out)
        cut = _cut(text, starts, first, hi - overlap)
        if cut is None:
            return _encode(tokenizer, text)
        ids_out.append(ids[first:cut])
        starts_out.append(starts[first:cut])
        near_end = int(np.searchsorted(starts, hi - overlap // 2))
        check = (ids[cut:near_end], starts[cut:near_end])
        pos = int(starts[cut])


def _cut(text: str, starts: np.ndarray, first: int, limit: int) -> int | None:
    """The index of the token where a piece's own tokens end: the last one starting after ``first`` and by
    ``limit``, preferably at a word boundary (whitespace on one side of its start)."""
    last = int(np.searchsorted(starts, limit, side="right")) - 1
    if last <= first:
        return None
    for j in range(last, max(first, last - _CUT_SEARCH_TOKENS), -1):
        s = int(starts[j])
        if s > starts[j - 1] and (text[s - 1].isspace() or text[s].isspace()):
            return j
    return last if starts[last] > starts[last - 1] else None


def _agrees(check: tuple[np.ndarray, np.ndarray], ids: np.ndarray, starts: np.ndarray, first: int) -> bool:
    want_ids, want_starts = check
    got = slice(first, first + len(want_ids))
    return bool(np.array_equal(ids[got], want_ids) and np.array_equal(starts[got], want_starts))

