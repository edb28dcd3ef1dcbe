"""Per-sample next-token NLL from the last hidden states, in chunks, in fp32.

Shapes: B sequences, T padded length, H hidden size, V vocabulary, N scored positions in a batch.
The full (B, T, V) logits tensor never exists: only (chunk, V) at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# What a forward pass costs beyond its padded tokens (kernel launches, smaller matmuls), in tokens.
BATCH_OVERHEAD_TOKENS = 256


def token_budget_batches(
    lengths: Sequence[int], token_budget: int, overhead: int = BATCH_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Group indices into micro-batches whose padded size (count x longest) stays within the budget.

    Sequences are sorted longest first and cut into contiguous runs by dynamic programming, which
    minimises padded tokens + ``overhead`` per batch: a greedy fill would pack a 1000-token document
    with 300-token ones and compute mostly padding. A sequence longer than the budget is a batch alone.
    """
    order = np.array(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)), dtype=np.int64)
    n = len(order)
    if n == 0:
        return []
    desc = np.asarray(lengths, dtype=np.int64)[order]
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    start = np.zeros(n + 1, dtype=np.int64)  # start[j]: where the last batch of the best split of [0, j) begins
    for i in range(n):  # cost[i] is final here: every batch ending at i starts before it
        size = max(1, min(n - i, token_budget // max(int(desc[i]), 1)))  # desc[i] is the batch's longest
        candidate = cost[i] + np.arange(1, size + 1) * desc[i] + overhead
        ends = slice(i + 1, i + size + 1)
        better = candidate < cost[ends]
        cost[ends] = np.where(better, candidate, cost[ends])
        start[ends] = np.where(better, i, start[ends])
    batches, j = [], n
    while j > 0:
        batches.append(order[start[j] : j].tolist())
        j = int(start[j])
    return batches[::-1]


def pad_batch(
    sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray] | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to (B, T): input_ids, and the mask of target tokens whose prediction is scored.

    ``loss_masks[i][t]`` says whether token t of sequence i is a scored *target*; position 0 never
    is (nothing predicts it). None means every token after the first.
    """
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    target = torch.zeros((len(sequences), T), dtype=torch.bool)
    for b, seq in enumerate(sequences):
        n = len(seq)
        ids[b, :n] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        if loss_masks is None:
            target[b, 1:n] = True
        else:
            target[b, :n] = torch.from_numpy(np.asarray(loss_masks[b], dtype=bool))
            target[b, 0] = False
    return ids, target


class LossModel:
    """A causal LM split into its backbone and an fp32 per-token NLL head, optionally compiled.

    ``compiled=True`` runs both through ``torch.compile``: it fuses the many element-wise ops of the
    backbone and the upcast + log-softmax of the head (about 1.6x and 3x on a bf16 CPU). The head
    then always sees full chunks (the last one zero-padded), so it compiles once for a static shape.
    """

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 256, compiled: bool = False):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.compiled = compiled
        self.device = next(model.parameters()).device
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._backbone = getattr(model, model.base_model_prefix)
        self._head = model.get_output_embeddings()
        if compiled:
            self._backbone = torch.compile(self._backbone, dynamic=True)
            self._chunk_nll = torch.compile(self._chunk_nll_eager, dynamic=False)
        else:
            self._chunk_nll = self._chunk_nll_eager

    def _chunk_nll_eager(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (C, H), targets (C,) -> NLL (C,) in fp32: logits in the model dtype, upcast before log-softmax."""
        logits = self._head(hidden).float()
        if self.softcap:  # Gemma-2 style final-logit soft-capping
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, targets, reduction="none")

    def token_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (N, H), targets (N,) -> NLL (N,) in fp32, ``chunk_tokens`` positions at a time.

        Memory is O(chunk x V): the (N, V) logits never exist.
        """
        n, c = targets.shape[0], self.chunk_tokens
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, c):
            h, y = hidden[start : start + c], targets[start : start + c]
            short = c - h.shape[0]
            if self.compiled and short:  # keep the compiled head's one static shape
                h = F.pad(h, (0, 0, 0, short))
                y = F.pad(y, (0, short))
            out[start : start + c] = self._chunk_nll(h, y)[: c - short if self.compiled else None]
        return out

    @torch.inference_mode()
    def batch_nll(
        self, sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray] | None = None, pad_id: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(nll_sum float64, n_tokens int64) per sequence of one padded micro-batch.

        Equals, per sequence, ``model(ids, labels=ids).loss * n_tokens`` of the unpadded sequence.
        """
        n_real = len(sequences)
        if self.compiled and n_real == 1:
            # a batch of one would make torch.compile specialise (and compile again) for B == 1
            sequences = [sequences[0], np.asarray([pad_id, pad_id], dtype=np.int64)]
            loss_masks = None if loss_masks is None else [loss_masks[0], np.zeros(2, dtype=bool)]
        ids, target = pad_batch(sequences, loss_masks, pad_id)
        if self.device.type == "cuda":  # page-locked host memory: the copy runs without a staging buffer
            ids, target = ids.pin_memory().to(self.device, non_blocking=True), target.pin_memory().to(self.device, non_blocking=True)
        else:
            ids, target = ids.to(self.device), target.to(self.device)
        if self.compiled and n_real == 1:
            target[1] = False
        # No attention mask: with right padding and causal attention, a real token only ever attends to
        # positions before it, which are all real, so the mask changes nothing we read; leaving it out
        # lets SDPA take its plain causal kernel (about 15% faster on CPU).
        hidden = self._backbone(input_ids=ids).last_hidden_state  # (B, T, H)
        scored = target[:, 1:]  # position t predicts token t+1
        h = hidden[:, :-1][scored]  # (N, H)
        y = ids[:, 1:][scored]  # (N,)
        owner = torch.arange(ids.shape[0], device=self.device).unsqueeze(1).expand_as(scored)[scored]  # (N,)
        nll = self.token_nll(h, y)
        sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=self.device).index_add_(0, owner, nll.double())
        counts = scored.sum(dim=1)
        return sums[:n_real].cpu().numpy(), counts[:n_real].cpu().numpy().astype(np.int64)


def batch_nll(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    loss_masks: Sequence[np.ndarray] | None = None,
    chunk_tokens: int = 256,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One-off eager :meth:`LossModel.batch_nll` (for tests and notebooks)."""
    return LossModel(model, chunk_tokens).batch_nll(sequences, loss_masks, pad_id)
