"""Pad token-id samples into a batch: labels masked outside the targets, static weights carried along."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hardfocus.contracts.scores import mask_from_spans

log = logging.getLogger(__name__)


@dataclass
class WeightedCollator:
    """Right-pads ``input_ids`` to the longest sample (cut at ``max_seq_len``).

    ``labels`` are the token ids at the sample's *target* positions and -100 everywhere else:
    a row's ``loss_spans`` (``[{"start", "stop"}, ...]``, the ranges of the tokens whose prediction
    is trained on, e.g. the assistant turns of a conversation) pick the targets; None or an absent
    key is plain text, whose targets are every token but the first. Padding gets
    ``attention_mask = 0`` and ``labels = -100``, so a padded sample's loss equals its unpadded
    loss. ``weight`` (float32, 1 where a row has none) travels as its own tensor.

    A sample longer than ``max_seq_len`` is cut, and a warning says how many were (first one, then at 10, 100, ...):
    its tokens past the cut are never trained on. Spans are clipped to the cut. A sample whose targets all lie beyond the cut
    (a prompt longer than ``max_seq_len``) keeps its place in the batch with all labels -100: its
    loss is 0 with no gradient (see :func:`training.weighting.per_sample_nll`), and a warning says
    how many such samples were seen (first one, then at 10, 100, ...): raise ``max_seq_len``, or
    score with ``max_tokens <= max_seq_len`` so such rows are excluded as ``prompt_too_long``.
    """

    pad_token_id: int
    max_seq_len: int
    samples_without_targets: int = 0  # seen so far by this collator (per process: Ray workers count their own)
    samples_cut: int = 0  # samples longer than max_seq_len seen so far: their tokens past it are never trained on
    tokens: int = 0  # real tokens collated so far (this process), and the positions computed for them (with padding)
    positions: int = 0

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs, labels = self._cut(rows)
        longest = max(len(s) for s in seqs)
        self.positions += longest * len(seqs)
        input_ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        padded_labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
        for i, (seq, label) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(seq)] = torch.from_numpy(seq)
            attention_mask[i, : len(seq)] = 1
            padded_labels[i, : len(seq)] = torch.from_numpy(label)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": padded_labels,
                "weight": _weights(rows)}

    def _cut(self, rows: Sequence[Mapping]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each row's token ids cut at ``max_seq_len`` and its labels (-100 outside its targets); warns as it counts."""
        full = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        if cut := [len(s) for s in full if len(s) > self.max_seq_len]:
            self._warn_cut(len(cut), max(cut))
        seqs = [s[: self.max_seq_len] for s in full]
        self.tokens += sum(len(s) for s in seqs)
        labels, no_targets = [], 0
        for row, seq in zip(rows, seqs):
            target = mask_from_spans(_spans(row.get("loss_spans")), len(seq))
            no_targets += not target.any()
            labels.append(np.where(target, seq, -100))
        if no_targets:
            self._warn_no_targets(no_targets, len(rows))
        return seqs, labels

    def _warn_cut(self, count: int, longest: int) -> None:
        before, self.samples_cut = self.samples_cut, self.samples_cut + count
        if _tenfold(before, self.samples_cut):
            log.warning(
                "%d samples so far are longer than max_seq_len=%d (up to %d tokens): their tokens past it are not "
                "trained on. Raise --max-seq-len to the scoring max_tokens (with --long-documents windows, every "
                "window is a sequence of up to max_tokens tokens)", self.samples_cut, self.max_seq_len, longest,
            )

    def _warn_no_targets(self, count: int, batch_size: int) -> None:
        before, self.samples_without_targets = self.samples_without_targets, self.samples_without_targets + count
        if _tenfold(before, self.samples_without_targets):
            log.warning(
                "%d of %d samples in a batch have no target token within max_seq_len=%d (their loss spans start "
                "beyond the cut; %d such samples so far): they are trained on with loss 0 and no gradient. Raise "
                "--max-seq-len, or score with max_tokens <= max_seq_len so they are excluded as prompt_too_long",
                count, batch_size, self.max_seq_len, self.samples_without_targets,
            )


@dataclass
class PackedCollator(WeightedCollator):
    """The same rows and labels, concatenated into one row without padding (padding-free training).

    ``position_ids`` restart at 0 for every sample, so the model's attention keeps the samples apart
    (``transformers`` turns restarting positions into a block-diagonal mask for SDPA and eager, and into
    variable-length sequences for flash attention); ``sample_index`` names each position's sample,
    so :func:`training.weighting.per_sample_nll_packed` gives each sample its own mean NLL. A sample's
    first token is never a target, so no position predicts across a boundary. ``weight`` has one entry per sample.
    """

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs, labels = self._cut(rows)
        self.positions += sum(len(s) for s in seqs)
        return {
            "input_ids": torch.from_numpy(np.concatenate(seqs))[None],
            "position_ids": torch.from_numpy(np.concatenate([np.arange(len(s)) for s in seqs]))[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None],
            "sample_index": torch.from_numpy(np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])),
            "weight": _weights(rows),
        }


def _weights(rows: Sequence[Mapping]) -> torch.Tensor:
    return torch.tensor([float(r.get("weight", 1.0)) for r in rows], dtype=torch.float32)


def _tenfold(before: int, after: int) -> bool:
    """Whether a count going from ``before`` to ``after`` earns a warning: the first, then at each power of 10."""
    return before == 0 or len(str(before)) < len(str(after))


def _spans(value) -> list[Mapping[str, int]] | None:
    """A row's ``loss_spans`` as a list of ``{start, stop}``; Ray Data gives an object array of dicts, or None."""
    if value is None:
        return None
    return list(value)
