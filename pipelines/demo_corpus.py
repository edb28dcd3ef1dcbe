"""Small real demo corpora in several groups (domains): plain text (``kind="text"``) or chat (``kind="chat"``).

Text: text every Debian/Python machine has. Groups: ``licenses`` (/usr/share/common-licenses), ``debian-copyright`` (/usr/share/doc/*/copyright),
``python-code`` (standard-library sources) and ``python-docs`` (standard-library docstrings).
Documents are cut at paragraph boundaries to realistic, mixed lengths. Missing sources are skipped
with a message.

Layout: ``train/<group>.jsonl`` and ``heldout/<group>.jsonl``. The held-out split is by source file
(every document cut from a held-out file is held out), so no held-out text has a near-copy in
training. ``noise_frac`` adds injected noise to the training split only: shuffled-word copies of
real training documents and random-character documents, marked in a ``noise`` column (the kind, or
null) that scoring and selection never read, so an analysis can see which band caught them.

Chat: real human two-person conversations of the Chit Chat Challenge (the ``chitchat-dataset``
package, MIT, read from the installed package, never the network), as ``messages`` lists of
``{role, content}`` (first sender ``user``), grouped by the theme of their conversation-starter
prompt (``CHAT_THEMES``) so per-group reports compare kinds of conversation. The held-out split is by
conversation. Noise (training split only) is ``swapped`` (fluent but off-topic replies: the
assistant turns of another training conversation) or ``shuffled`` (each assistant turn's words
shuffled); the user turns stay real, since only assistant turns are scored and trained on.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import logging
import math
import random
import string
import sysconfig
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from hardfocus.errors import HardfocusError

log = logging.getLogger(__name__)


def _files(pattern_root: Path, glob: str, limit: int) -> list[Path]:
    if not pattern_root.exists():
        return []
    return sorted(pattern_root.glob(glob))[:limit]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(_read(path))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 200:
                yield doc


def _cut(text: str, rng: random.Random, max_chars: int) -> Iterator[str]:
    """Split at blank lines into documents of log-uniform length (about 100 to max_chars characters)."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    doc: list[str] = []
    target = int(10 ** rng.uniform(2, math.log10(max_chars)))
    for p in paragraphs:
        doc.append(p)
        if sum(map(len, doc)) >= target:
            yield "\n\n".join(doc)[:max_chars]
            doc, target = [], int(10 ** rng.uniform(2, math.log10(max_chars)))
    if doc:
        yield "\n\n".join(doc)[:max_chars]


def sources() -> dict[str, Iterator[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "licenses": (_read(p) for p in _files(Path("/usr/share/common-licenses"), "*", 50) if p.is_file()),
        "debian-copyright": (_read(p) for p in _files(Path("/usr/share/doc"), "*/copyright", 400)),
        "python-code": (_read(p) for p in _files(stdlib, "*.py", 120)),
        "python-docs": (d for p in _files(stdlib, "*.py", 400) for d in _docstrings(p)),
    }


NOISE_KINDS = ("shuffled_words", "random_chars")


class CorpusKind(StrEnum):
    TEXT = "text"
    CHAT = "chat"


def build_demo_corpus(
    out_dir: str | Path,
    docs_per_group: int = 150,
    max_chars: int = 4000,
    seed: int = 0,
    heldout_frac: float = 0.2,
    noise_frac: float = 0.0,
    kind: str = CorpusKind.TEXT,
    max_turns: int = 12,
) -> dict[str, dict[str, int]]:
    """Write ``train/`` and ``heldout/`` JSONL shards; returns counts per split and group.

    ``text``: rows ``text``, ``group``, ``noise``, documents of at most ``max_chars``. ``chat``: see
    ``build_chat_corpus`` (``max_turns`` applies; ``max_chars`` does not).
    """
    if not 0 <= heldout_frac < 1 or not 0 <= noise_frac < 1:
        raise ValueError("heldout_frac and noise_frac must be in [0, 1)")
    if CorpusKind(kind) is CorpusKind.CHAT:
        return build_chat_corpus(out_dir, docs_per_group, seed, heldout_frac, noise_frac, max_turns)
    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {"train": {}, "heldout": {}, "noise": {}}
    for group, texts in sources().items():
        rng = random.Random(f"{seed}-{group}")
        files = [[d for d in _cut(t, rng, max_chars) if len(d.strip()) > 20] for t in texts if t.strip()]
        files = [f for f in files if f]
        if not files:
            log.warning("demo corpus: no text found for group '%s' on this machine; skipped", group)
            continue
        rng.shuffle(files)
        train, heldout = _split_by_file(files, docs_per_group, heldout_frac, rng)
        noise = _noise(train, noise_frac, rng)
        _write_jsonl(out / "train" / f"{group}.jsonl", _text_rows(group, [(d, None) for d in train] + noise), rng)
        if heldout:
            _write_jsonl(out / "heldout" / f"{group}.jsonl", _text_rows(group, [(d, None) for d in heldout]), rng)
        counts["train"][group], counts["heldout"][group], counts["noise"][group] = len(train) + len(noise), len(heldout), len(noise)
    log.info("demo corpus in %s: %s", out, counts)
    return counts


T = TypeVar("T")


def _split_by_file(files: list[list[T]], n_docs: int, heldout_frac: float, rng: random.Random) -> tuple[list[T], list[T]]:
    """Whole source files to the held-out split until it holds its share of ``n_docs`` documents.

    Returns (training, held-out). A chat corpus passes one-conversation "files".
    """
    all_docs = sum(len(f) for f in files)
    n_docs = min(n_docs, all_docs)
    want_heldout = int(round(n_docs * heldout_frac))
    heldout: list[T] = []
    rest: list[T] = []
    for f in files:
        if len(heldout) < want_heldout and len(files) > 1:
            heldout.extend(f)
        else:
            rest.extend(f)
    rng.shuffle(heldout)
    rng.shuffle(rest)
    return rest[: n_docs - min(len(heldout), want_heldout)], heldout[:want_heldout]


def _noise(train: list[str], noise_frac: float, rng: random.Random) -> list[tuple[str, str]]:
    """``noise_frac`` of the training split as noise: shuffled-word copies and random-character documents."""
    n = int(round(len(train) * noise_frac / (1 - noise_frac))) if noise_frac else 0
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 12 + "\n"
    out = []
    for i in range(n):
        source = rng.choice(train)
        if i % 2 == 0:
            words = source.split()
            rng.shuffle(words)
            out.append((" ".join(words), NOISE_KINDS[0]))
        else:
            out.append(("".join(rng.choice(alphabet) for _ in range(len(source))), NOISE_KINDS[1]))
    return out


def _text_rows(group: str, docs: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
    return [{"text": text, "group": group, "noise": noise} for text, noise in docs]


def _write_jsonl(path: Path, rows: list[dict[str, Any]], rng: random.Random) -> None:
    """Rows in random order, so a reader that takes a file's head gets no block of noise or of one source.

    A file that already holds exactly these bytes is left alone: its modification time is part of what its
    scores were computed from, so rebuilding the same corpus (a rerun of ``make demo``) must not make it stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    rng.shuffle(rows)
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if path.is_file() and path.read_bytes() == data:
        return
    path.write_bytes(data)


# ---- chat -------------------------------------------------------------------------------------

CHAT_NOISE_KINDS = ("swapped", "shuffled")
CHAT_FREE_GROUP = "free"  # no starter prompt, or one not listed below

# The Chit Chat Challenge's conversation starters by theme, so that groups differ in what people talk
# about (themes of a few hundred to a few thousand usable conversations each).
CHAT_THEMES: dict[str, tuple[str, ...]] = {
    "personal": (
        "What's the most interesting thing you've learned recently?",
        "What's one thing your best friend doesn't know about you?",
        "Is there something that you don't know that you're embarrassed about not knowing?",
        "What's your favorite smell?",
        "If you could relive one day of your life, which would it be and why?",
        "What's the best thing that happened to you this year?",
        "What's your secret superpower? (i.e. What are you really really good at.)",
        "What charitable or philanthropic cause are you most passionate about?",
        "What's the craziest thing you've ever done?",
        "If you had to give a TED talk tomorrow, what would it be about?",
    ),
    "hypothetical": (
        "If money were no object, how would you spend your time?",
        "What superpower do you wish you had, and why?",
        "If you were in power for a day, how would you try to improve the country?",
        "What if the world was made of peanut butter?",
        "What would you do if you had a flying car?",
        "What if unicorns were real?",
        "What would you do if you had a million dollars?",
        "What if pigs could fly?",
        "What if you woke up tomorrow morning, and everyone had vanished except you?",
        "What would you do if you had a magic wand?",
        "How would the world be different if pets could talk?",
        "What would happen if humans developed faster-than-light space travel?",
        "What would happen if the internet just... stopped working?",
    ),
    "computers-and-ai": (
        "Do you think computers will ever be given the right to vote?",
        "Can computers fall in love?",
        "If a computer becomes indistinguishable from a person, is it murder to turn it off?",
        "What if computers started asking not to be turned off?",
        "Is it still catfishing if it's a computer doing it?",
        "What would happen if two computers chatted with each other?",
        "How would you define true artificial intelligence?",
    ),
    "media-and-culture": (
        "What's the last film that truly made an impression on you?",
        "Mozart or Beethoven?",
        "Which intelligent movie computer do you like best? (i.e. Jarvis from Iron Man, HAL from Space Odyssey 2000, "
        "the Star Trek Computer, the robot from Interstellar, etc.)",
        "Who is your modern-day hero?",
    ),
}
_GROUP_OF_PROMPT = {prompt: group for group, prompts in CHAT_THEMES.items() for prompt in prompts}


def chat_group(prompt: str | None) -> str:
    """The group of a conversation-starter prompt; no prompt or an unknown one -> ``free``, never an error."""
    return _GROUP_OF_PROMPT.get((prompt or "").strip(), CHAT_FREE_GROUP)


def _load_chitchat() -> dict[str, dict[str, Any]]:
    """``dataset.json`` of the installed ``chitchat-dataset`` package (a dependency; no download)."""
    try:
        data = importlib.resources.files("chitchat_dataset").joinpath("dataset.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise HardfocusError(f"the chat demo corpus needs the chitchat-dataset package (pip install chitchat-dataset): {exc}") from None
    return json.loads(data)


def chat_messages(turns: list[list[dict[str, str]]], max_turns: int) -> list[dict[str, str]]:
    """``{role, content}`` messages of a conversation's turns: first sender ``user``, anyone else ``assistant``.

    Empty utterances are dropped, a turn's utterances joined with newlines and consecutive turns of one
    role merged, so roles alternate. At most ``max_turns`` messages, ending with an ``assistant`` turn (a
    trailing user turn has no reply to score or train on); [] when nobody answers the first sender.
    """
    messages: list[dict[str, str]] = []
    first_sender = None
    for turn in turns:
        for utterance in turn:
            text = (utterance.get("text") or "").strip()
            if not text:
                continue
            first_sender = first_sender or utterance["sender"]
            role = "user" if utterance["sender"] == first_sender else "assistant"
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": role, "content": text})
    messages = messages[:max_turns]
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    return messages if len(messages) >= 2 else []


def build_chat_corpus(
    out_dir: str | Path,
    docs_per_group: int = 150,
    seed: int = 0,
    heldout_frac: float = 0.2,
    noise_frac: float = 0.0,
    max_turns: int = 12,
) -> dict[str, dict[str, int]]:
    """Write a chat corpus: ``train/`` and ``heldout/<group>.jsonl`` rows ``id``, ``group``, ``messages``, ``noise``.

    ``docs_per_group`` conversations per group (training + held-out), held out by conversation. Noise
    rows are extra, altered copies of training conversations (id ``<id>-noise``, the source's group), so
    the clean originals stay in; they make ``noise_frac`` of the training rows. Returns counts per
    split and group like the text kind, plus ``skipped``: conversations of the whole dataset left out
    because nobody answers the first sender (about 44% of it), which could not be scored.
    """
    if not 0 <= heldout_frac < 1 or not 0 <= noise_frac < 1:
        raise ValueError("heldout_frac and noise_frac must be in [0, 1)")
    if max_turns < 2:
        raise ValueError("max_turns must be at least 2 (a user turn and its reply)")
    out = Path(out_dir)
    by_group: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, int] = {}
    for conv_id, conv in sorted(_load_chitchat().items()):
        group = chat_group(conv.get("prompt"))
        messages = chat_messages(conv.get("messages") or [], max_turns)
        if messages:
            by_group.setdefault(group, []).append({"id": conv_id, "group": group, "messages": messages, "noise": None})
        else:
            skipped[group] = skipped.get(group, 0) + 1
    counts: dict[str, dict[str, int]] = {"train": {}, "heldout": {}, "noise": {}, "skipped": skipped}
    for group, convs in sorted(by_group.items()):
        rng = random.Random(f"{seed}-chat-{group}")
        rng.shuffle(convs)
        train, heldout = _split_by_file([[c] for c in convs], docs_per_group, heldout_frac, rng)
        noise = _chat_noise(train, noise_frac, rng)
        _write_jsonl(out / "train" / f"{group}.jsonl", train + noise, rng)
        if heldout:
            _write_jsonl(out / "heldout" / f"{group}.jsonl", heldout, rng)
        counts["train"][group], counts["heldout"][group], counts["noise"][group] = len(train) + len(noise), len(heldout), len(noise)
    log.info("chat demo corpus in %s: %s", out, counts)
    return counts


def _assistant_contents(conv: dict[str, Any]) -> list[str]:
    return [m["content"] for m in conv["messages"] if m["role"] == "assistant"]


def _with_assistant_contents(conv: dict[str, Any], contents: list[str], noise_id: str, kind: str) -> dict[str, Any]:
    """A copy of ``conv`` whose assistant turns say ``contents`` (in order); user turns unchanged."""
    replies = iter(contents)
    messages = [{"role": m["role"], "content": next(replies) if m["role"] == "assistant" else m["content"]} for m in conv["messages"]]
    return {"id": noise_id, "group": conv["group"], "messages": messages, "noise": kind}


def _chat_noise(train: list[dict[str, Any]], noise_frac: float, rng: random.Random) -> list[dict[str, Any]]:
    """``noise_frac`` of the training rows as noise, alternately ``swapped`` and ``shuffled`` copies.

    Sources are drawn without replacement while they last. ``swapped`` takes every reply from one other
    training conversation, cycled or cut to the source's number of replies; a source for which no other
    conversation gives different replies (a one-conversation split) gets ``shuffled`` instead.
    """
    n = int(round(len(train) * noise_frac / (1 - noise_frac))) if noise_frac and train else 0
    order = rng.sample(train, len(train))
    out = []
    for i in range(n):
        source = order[i % len(order)]
        noise_id = f"{source['id']}-noise" + (f"{i // len(order) + 1}" if i >= len(order) else "")
        replies = _assistant_contents(source)
        swapped = None
        if i % 2 == 0:
            for donor in rng.sample(train, len(train)):
                theirs = _assistant_contents(donor)
                candidate = [theirs[j % len(theirs)] for j in range(len(replies))]
                if donor["id"] != source["id"] and candidate != replies:
                    swapped = candidate
                    break
        if swapped is not None:
            out.append(_with_assistant_contents(source, swapped, noise_id, CHAT_NOISE_KINDS[0]))
        else:
            out.append(_with_assistant_contents(source, [_shuffle_words(r, rng) for r in replies], noise_id, CHAT_NOISE_KINDS[1]))
    return out


def _shuffle_words(text: str, rng: random.Random) -> str:
    """The words of ``text`` in a new order (short replies like "me too" would often keep theirs by chance)."""
    words = text.split()
    shuffled = list(words)
    for _ in range(20 if len(set(words)) > 1 else 0):
        rng.shuffle(shuffled)
        if shuffled != words:
            break
    return " ".join(shuffled)
