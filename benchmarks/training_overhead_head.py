"""The training-overhead benchmark's second measurement: the loss head alone, the only computation in which its
arms differ (the Trainer's ``model.loss_function`` against ``per_sample_nll`` + ``StepWeighter.plan``, and a
candidate ``per_sample_nll_shifted``), forward and backward on one batch of real logits, with a profile."""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("training_overhead")

LOSS_HEAD_REPS = 5
PROFILE_TOP_OPS = 6
CLONE = "clone of the logits (subtracted)"


def per_sample_nll_shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate for ``training.weighting.per_sample_nll``: the same values, computed the way the Trainer's own loss
    (``ForCausalLMLoss``) does it: the labels are shifted (padded with -100) instead of the logits sliced, and the
    cross entropy runs on contiguous ``(B * T, V)`` rows instead of the transposed ``(B, V, T - 1)`` view. No
    ``logits[:, :-1]`` slice means no full-size zero-filled gradient buffer in its backward."""
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    n_tokens = shift_labels.ne(-100).sum(1)
    return nll.sum(1) / n_tokens.clamp_min(1), n_tokens


def loss_head_timing(model_path: str, samples, args) -> dict:
    """Seconds (median of reps, variants interleaved) of the loss's forward + backward to the logits, on one batch
    of real logits, and how far the candidate's per-sample losses and logit gradients are from the current ones.

    plain: ``model.loss_function(logits, labels, vocab_size, num_items_in_batch)``, as ``model(labels=...)`` runs it;
    hardfocus: ``per_sample_nll`` + ``StepWeighter.plan`` + ``(coef * losses).sum()``, as
    ``WeightedTrainer.compute_loss`` runs it (static+online: the most work ``plan`` does; the head is the same
    ``per_sample_nll`` for every weighting); candidate: the same with :func:`per_sample_nll_shifted`.
    """
    from training.build import load_base, make_weighter
    from training.config import TrainConfig
    from training.weighting import per_sample_nll

    model, _ = load_base(model_path)
    ids = torch.from_numpy(samples.ids[: args.batch_size].astype(np.int64))
    weight = torch.from_numpy(samples.weights[: args.batch_size])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        base = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.detach()
    labels = ids.clone()
    n_items = torch.tensor(int(labels[:, 1:].ne(-100).sum()))
    weighter = make_weighter(TrainConfig(data=["unused"], output="unused", weighting="static+online"))

    def plain() -> torch.Tensor:
        logits = base.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model.loss_function(logits, labels, vocab_size=model.config.vocab_size, num_items_in_batch=n_items)
        loss.backward()
        return logits.grad

    def weighted(head):
        def step() -> torch.Tensor:
            logits = base.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                losses, _ = head(logits, labels)
                weighter.start_step([len(ids)])
                plan = weighter.plan(losses.detach(), weight)
                loss = (plan.coef * losses).sum()
            loss.backward()
            return logits.grad

        return step

    def clone_only() -> torch.Tensor:
        return base.clone().requires_grad_(True)

    fns = {CLONE: clone_only, "plain": plain, "hardfocus": weighted(per_sample_nll),
           "candidate": weighted(per_sample_nll_shifted)}
    for fn in fns.values():
        fn()  # warm-up
    reps: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(LOSS_HEAD_REPS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            reps[name].append(time.perf_counter() - t0)
    clone = statistics.median(reps.pop(CLONE))
    seconds = {name: max(statistics.median(r) - clone, 0.0) for name, r in reps.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        current = per_sample_nll(base, labels)[0]
        candidate = per_sample_nll_shifted(base, labels)[0]
    grad_diff = float((fns["hardfocus"]() - fns["candidate"]()).abs().max())
    profiles = {name: top_ops(fns[name]) for name in ("plain", "hardfocus", "candidate")}
    log.info("loss head fwd+bwd: %s", ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in seconds.items()))
    return {
        "seconds": seconds, "clone_s": clone, "reps": LOSS_HEAD_REPS, "vocab": int(base.shape[-1]),
        "candidate_loss_max_abs_diff": float((current - candidate).abs().max()),
        "candidate_grad_max_abs_diff": grad_diff,
        "profiles": profiles,
    }


def top_ops(fn, n: int = PROFILE_TOP_OPS) -> list[dict]:
    """The ``n`` aten ops with the most self CPU time in one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in events[:n]]

