"""The token id a batch is padded with, the same in scoring, training and evaluation."""

from __future__ import annotations


def pad_token_id(tokenizer) -> int:
    """Any valid id works for padding: padded positions are masked from attention and from the loss. The tokenizer's
    own pad token where it has one, else its EOS, else UNK, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
