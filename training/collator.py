"""Pad token-id samples into a batch: labels masked on padding, static weights carried along."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class WeightedCollator:
    """Right-pads ``input_ids`` to the longest sample (cut at ``max_seq_len``).

    Padding gets ``attention_mask = 0`` and ``labels = -100``, so a padded sample's loss equals its
    unpadded loss. ``weight`` (float32, 1 where a row has none) travels as its own tensor.
    """

    pad_token_id: int
    max_seq_len: int

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        seqs = [np.asarray(r["input_ids"], dtype=np.int64)[: self.max_seq_len] for r in rows]
        longest = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        labels = torch.full((len(seqs), longest), -100, dtype=torch.long)
        for i, seq in enumerate(seqs):
            n = len(seq)
            input_ids[i, :n] = torch.from_numpy(seq)
            attention_mask[i, :n] = 1
            labels[i, :n] = input_ids[i, :n]
        weight = torch.tensor([float(r.get("weight", 1.0)) for r in rows], dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weight": weight}

    def from_columns(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The same batch from Ray Data's columnar ``{column: array}`` form."""
        n = len(batch["input_ids"])
        weights = batch.get("weight")
        rows = [
            {"input_ids": batch["input_ids"][i], "weight": 1.0 if weights is None else float(weights[i])} for i in range(n)
        ]
        return self(rows)
