"""The fingerprints stage outputs record and compare: of a model checkpoint, of a tokenizer, of
any JSON-able identity. Equal fingerprints mean the same thing; every stage that reads another's
output compares them before it trusts it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec

from hardfocus.cache import cache_dir
from hardfocus.storage import commit_bytes

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def digest(obj) -> str:
    """A short stable hash of a JSON-able value (an identity, a marker's content)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_checkpoint(path: str) -> str:
    """sha256 over config.json and the weight files, cached by (path, sizes, mtimes)."""
    files = sorted(
        p for p in Path(path).iterdir() if p.name == "config.json" or p.name.endswith(_WEIGHT_SUFFIXES)
    )
    key = hashlib.sha256(
        json.dumps([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
    ).hexdigest()
    memo = cache_dir() / "fingerprints" / f"{key}.txt"
    if memo.is_file():
        value = memo.read_text().strip()
        if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
            return value  # else damaged: computed again and rewritten
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    value = h.hexdigest()[:32]
    memo.parent.mkdir(parents=True, exist_ok=True)
    commit_bytes(fsspec.filesystem("file"), str(memo), value.encode())
    return value


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation and special tokens: equal iff it tokenises the same.

    Manifests record it, and every stage that reads token ids compares it with the tokenizer it uses.
    """
    payload = tokenizer.backend_tokenizer.to_str() + json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
