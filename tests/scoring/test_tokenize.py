"""Tokenisation: statuses for degenerate documents, truncation flagged, the long-text shortcut exact."""

from __future__ import annotations

import pytest

from hardfocus.tokenize import tokenize_texts
from hardfocus.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_statuses_and_truncation(tokenizer):
    texts = [None, "", "   \n\t", "a", "The river flows to the sea.", "word " * 400, "bad \ud800 surrogate", "kept"]
    pre = [None] * len(texts)
    pre[-1] = "invalid_utf8"  # a status set while reading is passed through untouched
    out = tokenize_texts(tokenizer, texts, pre, max_tokens=50)
    assert out.status[:3] == ["empty"] * 3
    assert out.status[3] == "too_short" and len(out.input_ids[3]) == 1
    assert out.status[4] is None and not out.truncated[4]
    assert out.status[5] is None and out.truncated[5] and len(out.input_ids[5]) == 50
    assert out.status[6] == "invalid_utf8"
    assert out.status[7] == "invalid_utf8" and len(out.input_ids[7]) == 0
    full = tokenizer(texts[5])["input_ids"]
    assert out.input_ids[5].tolist() == full[:50]


def test_long_text_shortcut_equals_full_tokenisation(tokenizer):
    """The character cut before tokenising must not change the first max_tokens tokens."""
    texts = ["x" * 5000, "=" * 3000 + " end", "The quick brown fox. " * 500, "ab" * 10]
    out = tokenize_texts(tokenizer, texts, [None] * 4, max_tokens=8)
    for text, ids, trunc in zip(texts, out.input_ids, out.truncated):
        full = tokenizer(text)["input_ids"]
        assert ids.tolist() == full[:8]
        assert trunc == (len(full) > 8)
