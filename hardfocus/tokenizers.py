"""The tokenizer of a model, and the token id a batch is padded with: the same in scoring, training and evaluation."""

from __future__ import annotations

from functools import lru_cache

from hardfocus.errors import HardfocusError


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """Load (and memoise per process) a fast tokenizer; Ray task workers reuse it across units."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise HardfocusError(f"the tokenizer of '{path}' is not a fast (Rust) tokenizer, which hardfocus needs")
    return tokenizer


def pad_token_id(tokenizer) -> int:
    """Any valid id works for padding: padded positions are masked from attention and from the loss. The tokenizer's
    own pad token where it has one, else its EOS, else UNK, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
