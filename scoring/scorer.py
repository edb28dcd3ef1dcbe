"""The scoring model, loaded once: token-budget micro-batches in, per-sample NLL out.

In-process and Ray alike use this class (Ray only decides where it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hardfocus.errors import HardfocusError
from hardfocus.tokenizers import load_tokenizer, pad_token_id
from scoring.loss import LossModel, token_budget_batches
from scoring.model import load_model, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

# How closely the chunked loss must reproduce the model's own loss on a probe sequence;
# anything further off means the model computes its logits in a way batch_nll does not.
_SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


class Scorer:
    """Holds one model; ``score`` returns (nll_sum, n_tokens) per sequence."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        device: str = "auto",
        token_budget: int = 16384,
        chunk_tokens: int = 256,
        torch_threads: int | None = None,
        compiled: bool = False,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = load_model(model_path, self.dtype, self.device)
        self.pad_id = pad_token_id(load_tokenizer(model_path))
        self.token_budget = token_budget
        self.loss = LossModel(self.model, chunk_tokens, compiled)
        self._self_check()  # compiled: this first call compiles, at start-up rather than mid-job

    def score(
        self, sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(nll_sum float64, n_tokens int64) per sequence, in the order given."""
        nll_sum = np.zeros(len(sequences), dtype=np.float64)
        n_tokens = np.zeros(len(sequences), dtype=np.int64)
        for batch, sums, counts in self.iter_batches(sequences, loss_masks):
            nll_sum[batch], n_tokens[batch] = sums, counts
        return nll_sum, n_tokens

    def iter_batches(
        self, sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray] | None = None
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """(indices, nll_sum, n_tokens) of each micro-batch as it is scored: progress within a long unit."""
        for batch in token_budget_batches([len(s) for s in sequences], self.token_budget):
            masks = None if loss_masks is None else [loss_masks[i] for i in batch]
            sums, counts = self.loss.batch_nll([sequences[i] for i in batch], masks, self.pad_id)
            yield batch, sums, counts

    @torch.inference_mode()
    def _self_check(self) -> None:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        probe = np.random.default_rng(0).integers(0, vocab, size=48).astype(np.int32)
        ours, count = self.score([probe, probe[:40]])  # two: the general (B > 1) compiled graph
        ids = torch.from_numpy(probe.astype(np.int64)).unsqueeze(0).to(self.device)
        theirs = float(self.model(input_ids=ids, labels=ids).loss)
        if abs(ours[0] / count[0] - theirs) > _SELF_CHECK_TOLERANCE[self.dtype] * max(1.0, abs(theirs)):
            raise HardfocusError(
                f"the chunked loss ({ours[0] / count[0]:.5f}) does not reproduce this model's own loss ({theirs:.5f}); "
                "its architecture computes logits in a way hardfocus does not support yet"
            )
