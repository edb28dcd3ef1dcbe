"""Per-sample losses and the coefficients that combine them into one optimiser step's objective.

One optimiser step sees N samples in k micro-batches (gradient accumulation). Its objective is

    L = (1/N) * sum_i w_i * l_i

with l_i the sample's mean token NLL (the scoring definition) and w_i its effective weight:
1 (ERM), the static selected/ weight s_i, or an online weight. Online IR-DRO (the paper's dynamic
form) uses w_i proportional to s_i * exp(l_i(theta_t) / r) with the losses detached, renormalised
to mean 1 over its window: one micro-batch (``online_window = 1``), or all k micro-batches of the
step (``online_window = k``, the reference code's ``--patience``).

A window of k micro-batches is done without keeping k graphs alive and without a second forward
pass: micro-batch j is back-propagated with the softmax normaliser of the losses seen so far, and
the gradients already accumulated are rescaled by ``exp(logZ_{j-1} - logZ_j)`` (<= 1) before it,
so after the last micro-batch they equal the gradient of the window-wide softmax exactly. That is
one in-place multiply of the gradients per micro-batch: it needs plain ``param.grad`` tensors
(single process or DDP), not DeepSpeed's or FSDP's gradient shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token NLL per sample (fp32) and the number of predicted positions.

    ``labels`` are aligned with the inputs (``labels[:, t]`` is token t; -100 = not predicted), as
    ``model(labels=...)`` takes them: position t's logits predict ``labels[:, t + 1]``. The mean is
    over the sample's own targets only (padding and, for instruction data, the tokens outside its
    ``loss_spans`` are -100). A sample with no target at all (its spans cut away by ``max_seq_len``;
    the collator warns) gets loss 0 and ``n_tokens`` 0, never NaN, and so no gradient.
    """
    b, t, v = logits.shape
    shift_labels = labels[:, 1:]
    # flattened (B*T, V) rows: cross entropy over a transposed (B, V, T) view is several times slower
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, v), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(b, t - 1)
    counted = shift_labels.ne(-100)
    n_tokens = counted.sum(1)
    return nll.sum(1) / n_tokens.clamp_min(1), n_tokens


def per_sample_nll_packed(logits: torch.Tensor, labels: torch.Tensor, sample_index: torch.Tensor, n_samples: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_sample_nll` of samples packed into one row (:class:`training.collator.PackedCollator`).

    ``logits`` (1, L, V), ``labels`` (1, L) and ``sample_index`` (L,): position t's logits predict
    ``labels[0, t + 1]``, which belongs to sample ``sample_index[t + 1]``; a sample's first label is
    -100, so no prediction crosses into the next sample. Sums per sample by ``index_add``.
    """
    v = logits.shape[-1]
    shift_labels = labels[0, 1:]
    nll = F.cross_entropy(logits[0, :-1].float().reshape(-1, v), shift_labels, ignore_index=-100, reduction="none")
    owner = sample_index[1:].to(nll.device)
    counted = shift_labels.ne(-100)
    sums = torch.zeros(n_samples, dtype=nll.dtype, device=nll.device).index_add_(0, owner, nll)
    n_tokens = torch.zeros(n_samples, dtype=torch.long, device=nll.device).index_add_(0, owner, counted.long())
    return sums / n_tokens.clamp_min(1), n_tokens


def irdro_weights_torch(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean-1 IR-DRO weights ``n * softmax(losses / r)`` (softmax subtracts the max: no overflow)."""
    return losses.numel() * torch.softmax(losses / temperature, dim=0)


def midrank_keep(losses: torch.Tensor, drop_top: float) -> torch.Tensor:
    """1 for samples kept, 0 for the ``round(drop_top * B)`` highest losses (at least one kept)."""
    n_drop = min(int(round(drop_top * losses.numel())), losses.numel() - 1)
    keep = torch.ones_like(losses)
    if n_drop > 0:
        keep[torch.topk(losses, n_drop).indices] = 0.0
    return keep


@dataclass
class MicroBatchPlan:
    """What one micro-batch contributes: ``loss = sum(coef * l)``, after the existing grads are scaled."""

    coef: torch.Tensor
    grad_scale: float  # multiply the already-accumulated gradients by this before this micro-batch's backward
    mean_loss_share: torch.Tensor  # this micro-batch's share of the step's unweighted mean loss (for the log)


@dataclass
class WeightStats:
    """Effective weights of the steps since the last log: what ``train_log.jsonl`` reports."""

    weights: list[torch.Tensor] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    weighted_losses: list[float] = field(default_factory=list)

    def add_step(self, weights: torch.Tensor, losses: torch.Tensor) -> None:
        p = weights / weights.sum()
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        self.entropies.append(entropy / math.log(p.numel()) if p.numel() > 1 else 1.0)
        self.weights.append(weights)
        self.weighted_losses.append(float((weights * losses).mean()))

    def pop(self) -> dict[str, float]:
        if not self.weights:
            return {}
        w = torch.cat(self.weights)
        out = {
            "weighted_loss": sum(self.weighted_losses) / len(self.weighted_losses),
            "weight_min": float(w.min()),
            "weight_mean": float(w.mean()),
            "weight_max": float(w.max()),
            "weight_entropy": sum(self.entropies) / len(self.entropies),  # normalised: 1 = uniform
        }
        self.weights, self.entropies, self.weighted_losses = [], [], []
        return out


class StepWeighter:
    """Turns each micro-batch's detached losses (and static weights) into loss coefficients.

    ``start_step`` is called with the micro-batch sizes of an optimiser step before its first
    forward pass (the Trainer prefetches them); ``plan`` once per micro-batch, in order.
    """

    def __init__(
        self,
        use_static: bool,
        online: str | None,  # None, "irdro" or "midrank"
        temperature: float = 1.0,
        online_window: int = 1,
        drop_top: float = 0.125,
    ):
        if online == "midrank" and online_window > 1:
            raise ValueError("online midrank ranks within one micro-batch; online_window must be 1")
        self.use_static, self.online = use_static, online
        self.temperature, self.window, self.drop_top = temperature, online_window, drop_top
        self.stats = WeightStats()
        self._sizes: list[int] = []

    def start_step(self, micro_batch_sizes: list[int]) -> None:
        if self.window > 1 and self.online and len(micro_batch_sizes) > self.window:
            raise ValueError(f"an optimiser step of {len(micro_batch_sizes)} micro-batches exceeds the online window {self.window}")
        self._sizes = list(micro_batch_sizes)
        self._n = sum(micro_batch_sizes)
        self._seen = 0
        self._log_norm = -math.inf
        self._logits: list[torch.Tensor] = []
        self._step_weights: list[torch.Tensor] = []
        self._step_losses: list[torch.Tensor] = []

    def plan(self, losses: torch.Tensor, static: torch.Tensor | None) -> MicroBatchPlan:
        """Coefficients of one micro-batch; ``losses`` must be detached."""
        if self._seen >= len(self._sizes):
            raise RuntimeError("plan() called more often than start_step() announced micro-batches")
        if self.use_static and static is None:
            raise ValueError("static weighting needs a 'weight' column in the batch")
        losses = losses.float()
        s = static.float() if self.use_static else torch.ones_like(losses)
        b, n = losses.numel(), self._n
        self._seen += 1
        self._step_losses.append(losses)
        share = losses.mean() * (b / n)
        grad_scale = 1.0
        if self.online == "irdro" and self.window > 1:
            logits = s.log() + losses / self.temperature
            new_norm = float(torch.logaddexp(torch.tensor(self._log_norm), torch.logsumexp(logits, 0)))
            grad_scale = math.exp(self._log_norm - new_norm) if self._seen > 1 else 1.0
            self._log_norm = new_norm
            self._logits.append(logits)
            coef = (logits - new_norm).exp()
        else:
            if self.online == "irdro":
                w = s * irdro_weights_torch(losses, self.temperature)
            elif self.online == "midrank":
                w = s * midrank_keep(losses, self.drop_top)
            else:
                w = s
            if self.online:  # static x online renormalised to mean 1 over the micro-batch
                w = w * (b / w.sum())
            self._step_weights.append(w)
            coef = w / n
        if self._seen == len(self._sizes):
            self._close_step()
        return MicroBatchPlan(coef=coef, grad_scale=grad_scale, mean_loss_share=share)

    def _close_step(self) -> None:
        if self._logits:
            logits = torch.cat(self._logits)
            weights = (logits - self._log_norm).exp() * logits.numel()
        else:
            weights = torch.cat(self._step_weights)
        self.stats.add_step(weights.detach().cpu(), torch.cat(self._step_losses).detach().cpu())
