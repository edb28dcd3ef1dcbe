"""The scoring benchmark's profile: its FLOP accounting against torch's own FLOP counter, and its time split."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from scoring.loss import LossModel, token_budget_batches


def load_speed_profile():
    from benchmarks import speed_profile as module

    return module


def test_op_class():
    sp = load_speed_profile()
    assert sp.op_class("aten::mm") == sp.op_class("aten::addmm") == "matmul"
    assert sp.op_class("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert sp.op_class("aten::add") == sp.op_class("## Call CompiledFxGraph abc") == "other"


def test_executed_flops_match_torch_flop_counter(tiny_model_dir):
    """Matmul FLOPs of an eager scoring pass as torch counts them. Attention runs on SDPA's math backend here,
    whose two batched matmuls torch counts (the full T x T square); halved, as the causal flash kernel the
    scorer uses skips the upper triangle, which our figure leaves out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM

    sp = load_speed_profile()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 200, size=n) for n in (70, 64, 33, 12, 5)]
    lengths = [len(s) for s in sequences]
    loss = LossModel(model, chunk_tokens=16)
    batches = token_budget_batches(lengths, token_budget=140, overhead=0)
    assert len(batches) > 1
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        for batch in batches:
            loss.batch_nll([sequences[i] for i in batch])
    counted = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    assert set(counted) <= {"aten.mm", "aten.addmm", "aten.bmm"}, counted
    shape = [(len(b), max(lengths[i] for i in b), sum(lengths[i] - 1 for i in b)) for b in batches]
    ours = sp.executed_flops(model, shape, head_rows=sum(n - 1 for n in lengths))
    assert ours["positions"] == sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert ours["matmul_flops"] == counted.get("aten.mm", 0) + counted.get("aten.addmm", 0)
    assert ours["attention_flops"] * 2 == counted["aten.bmm"]


def test_profile_finds_matmuls_and_attention_in_a_real_scoring_pass(tiny_model_dir):
    """The op names it classifies by are the ones torch's profiler reports for the scorer's kernels."""
    from scoring.scorer import Scorer

    sp = load_speed_profile()
    scorer = Scorer(tiny_model_dir, dtype="float32", token_budget=256, chunk_tokens=32)
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    p = sp.profile_scorer(scorer, [rng.integers(3, 200, size=n) for n in (90, 60, 30, 8)])
    wall = time.perf_counter() - started
    assert p["classes"]["matmul"]["seconds"] > 0 and p["classes"]["attention"]["seconds"] > 0
    # self times of the ops the scorer's thread ran: no op counted twice, so they fit in the pass's wall time
    assert 0 < p["total_s"] <= wall
    assert p["matmul_flops"] > p["attention_flops"] > 0
    assert "| attention" in sp.profile_table(p, bf16_peak_gflops=100.0)
