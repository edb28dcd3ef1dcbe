"""Where a Scorer's time goes: one profiled pass, split into matmuls, attention and the rest, with FLOP rates.

The utilisation figure of the benchmark says how far from the peak scoring runs; this says why. Each kernel
class gets its seconds (the profiler's self time on the calling thread, which is wall time: the intra-op
threads work inside those calls) and, for matmuls and attention, the FLOPs it executed, so a reader can see
whether the matmuls themselves run near the peak and what the remaining time is spent on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.harness import markdown_table

log = logging.getLogger("scoring_speed")

MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_weight_int8pack_mm"})


def op_class(name: str) -> str:
    """'matmul', 'attention' or 'other' for a profiler event name."""
    if name in MATMUL_OPS or (name.startswith("mkldnn::") and "linear" in name):
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name or "flex_attention" in name:
        return "attention"
    return "other"


def executed_flops(model: torch.nn.Module, batches: Sequence[tuple[int, int, int]], head_rows: int) -> dict:
    """Matmul and attention FLOPs that scoring executes, padding included.

    ``batches``: (rows, padded length, scored positions) per forward pass; ``head_rows``: positions the output
    head ran on (scored positions, plus the zero rows that keep a compiled head's chunk shape static).
    Matmuls: 2 x (weights of the backbone's linear layers) per padded position, 2 x vocab x hidden per head row.
    Attention: QK^T and AV with the upper triangle skipped, 2 x T^2 x (heads x head_dim) per row and layer.
    """
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix)
    linear = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    width = cfg.num_attention_heads * head_dim
    positions = sum(rows * length for rows, length, _ in batches)
    attention = sum(rows * 2 * length**2 * width * cfg.num_hidden_layers for rows, length, _ in batches)
    return {
        "positions": positions,
        "matmul_flops": 2 * linear * positions + 2 * head.weight.numel() * head_rows,
        "attention_flops": attention,
    }


def forward_shapes(scorer, lengths: Sequence[int]) -> tuple[list[tuple[int, int, int]], int]:
    """What ``scorer.score`` runs for sequences of these lengths: (rows, padded length, scored positions) per
    forward pass, and the rows its output head computes."""
    from scoring.loss import token_budget_batches

    compiled, chunk = scorer.loss.compiled, scorer.loss.chunk_tokens
    shapes, head_rows = [], 0
    for batch in token_budget_batches(lengths, scorer.token_budget):
        rows = max(len(batch), 2) if compiled else len(batch)  # the compiled path pads a batch of one with a row
        scored = sum(lengths[i] - 1 for i in batch)
        shapes.append((rows, max(lengths[i] for i in batch), scored))
        head_rows += math.ceil(scored / chunk) * chunk if compiled else scored  # compiled: whole chunks only
    return shapes, head_rows


def profile_scorer(scorer, sequences: Sequence[np.ndarray]) -> dict:
    """Score ``sequences`` once more under torch.profiler; seconds, share and GFLOP/s per kernel class."""
    from torch.profiler import ProfilerActivity, profile

    compiled = scorer.loss.compiled
    flops = executed_flops(scorer.model, *forward_shapes(scorer, [len(s) for s in sequences]))

    log.info("profiling one more pass of the %s scorer", "compiled" if compiled else "eager")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        scorer.score(sequences)
    seconds = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        seconds[op_class(event.key)] += event.self_cpu_time_total / 1e6
    total = sum(seconds.values())
    rates = {
        "matmul": flops["matmul_flops"] / seconds["matmul"] / 1e9 if seconds["matmul"] else float("nan"),
        "attention": flops["attention_flops"] / seconds["attention"] / 1e9 if seconds["attention"] else float("nan"),
        "other": float("nan"),
    }
    classes = {name: {"seconds": s, "share": s / total, "gflops": rates[name]} for name, s in seconds.items()}
    return {"compiled": compiled, "total_s": total, "classes": classes} | flops


def profile_table(p: dict, bf16_peak_gflops: float) -> str:
    labels = {
        "matmul": "matmuls (`aten::mm`/`addmm`: projections, MLP, output head)",
        "attention": "attention (SDPA's CPU flash kernel)",
        "other": "everything else (fused element-wise kernels, norms, RoPE, loss, Python)",
    }
    flops = {"matmul": p["matmul_flops"], "attention": p["attention_flops"]}
    rows = [[labels[name], f"{c['seconds']:.1f}", f"{100 * c['share']:.0f}%",
             *([f"{flops[name] / 1e12:.2f} T", f"{c['gflops']:.0f}", f"{100 * c['gflops'] / bf16_peak_gflops:.0f}%"]
               if name in flops else ["", "", ""])] for name, c in p["classes"].items()]
    header = ["kernel class", "seconds", "share of time", "FLOPs executed", "GFLOP/s", "of bf16 peak"]
    return markdown_table(header, rows, "lr")
