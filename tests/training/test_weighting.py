"""The objective's pieces against direct computations: per-sample loss, static, online and midrank weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from selection.irdro import irdro_weights
from tests.training.helpers import mixed_length_sequences
from training.collator import WeightedCollator
from training.weighting import StepWeighter, irdro_weights_torch, midrank_keep, per_sample_nll


def test_padded_per_sample_loss_equals_each_samples_own_model_loss(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    seqs = mixed_length_sequences(6, vocab=290, seed=4)
    batch = WeightedCollator(pad_token_id=0, max_seq_len=512)([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, n_tokens = per_sample_nll(logits, batch["labels"])
        for i, seq in enumerate(seqs):
            ids = torch.tensor([seq])
            assert n_tokens[i] == len(seq) - 1
            assert abs(float(losses[i]) - float(model(input_ids=ids, labels=ids).loss)) < 1e-5


def _plan_all(weighter: StepWeighter, losses: list[torch.Tensor], static: list[torch.Tensor]):
    weighter.start_step([len(x) for x in losses])
    return [weighter.plan(l, s) for l, s in zip(losses, static)]


def test_static_coefficients_are_weights_over_the_step_size():
    losses, static = [torch.rand(4), torch.rand(3)], [torch.rand(4) + 0.5, torch.rand(3) + 0.5]
    plans = _plan_all(StepWeighter(use_static=True, online=None), losses, static)
    objective = sum(float((p.coef * l).sum()) for p, l in zip(plans, losses))
    direct = float((torch.cat(static) * torch.cat(losses)).sum()) / 7
    assert objective == pytest.approx(direct, rel=1e-6)
    assert all(p.grad_scale == 1.0 for p in plans)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_online_irdro_per_micro_batch_matches_the_closed_form(temperature):
    rng = np.random.default_rng(0)
    l = rng.uniform(1, 6, 8)
    s = rng.uniform(0.5, 2, 8)
    (plan,) = _plan_all(StepWeighter(use_static=True, online="irdro", temperature=temperature), [torch.tensor(l)], [torch.tensor(s)])
    # independent: selection's numpy IR-DRO weights times the static weights, renormalised to mean 1
    w = s * irdro_weights(l, temperature)
    w = w * len(w) / w.sum()
    np.testing.assert_allclose(plan.coef.numpy() * 8, w, rtol=1e-5)


def test_online_irdro_window_rescales_to_one_softmax_over_the_window():
    """Coefficients x the later grad scales == softmax over all micro-batches of the step."""
    rng = np.random.default_rng(1)
    losses = [torch.tensor(rng.uniform(1, 9, 3)) for _ in range(3)]  # later batches hold larger losses: scales < 1
    static = [torch.tensor(rng.uniform(0.5, 2, 3)) for _ in range(3)]
    plans = _plan_all(StepWeighter(use_static=True, online="irdro", temperature=0.5, online_window=3), losses, static)
    effective = []
    for j, plan in enumerate(plans):
        later = math.prod(p.grad_scale for p in plans[j + 1 :])
        effective.append(plan.coef * later)
    logits = torch.cat([s.log() + l / 0.5 for s, l in zip(static, losses)])
    np.testing.assert_allclose(torch.cat(effective).numpy(), torch.softmax(logits, 0).numpy(), rtol=1e-5)
    assert plans[0].grad_scale == 1.0 and all(0 < p.grad_scale <= 1 for p in plans)


def test_midrank_drops_the_highest_losses_and_renormalises():
    l = torch.tensor([1.0, 9.0, 3.0, 8.0, 2.0, 4.0, 5.0, 6.0])
    assert midrank_keep(l, 0.25).tolist() == [1, 0, 1, 0, 1, 1, 1, 1]
    (plan,) = _plan_all(StepWeighter(use_static=False, online="midrank", drop_top=0.25), [l], [None])
    kept = l[[0, 2, 4, 5, 6, 7]]
    assert float((plan.coef * l).sum()) == pytest.approx(float(kept.mean()))


def test_weight_statistics():
    weighter = StepWeighter(use_static=False, online="irdro", temperature=1e9)
    _plan_all(weighter, [torch.rand(5)], [None])
    stats = weighter.stats.pop()
    assert stats["weight_entropy"] == pytest.approx(1.0) and stats["weight_max"] == pytest.approx(1.0)
    weighter = StepWeighter(use_static=False, online="irdro", temperature=0.01)
    _plan_all(weighter, [torch.tensor([0.0, 0.0, 5.0])], [None])
    stats = weighter.stats.pop()
    assert stats["weight_entropy"] < 0.01 and stats["weight_max"] == pytest.approx(3.0)


@pytest.mark.parametrize("temperature", [0.05, 0.7, 5.0])
def test_the_torch_form_equals_the_numpy_closed_form(temperature):
    """Training's online weights and selection's static ones are one formula: n * softmax(l / r)."""
    losses = np.array([2.0, 3.0, 0.5, 7.0, 700.0])  # a raw exp(700 / 0.05) would overflow
    got = irdro_weights_torch(torch.tensor(losses), temperature).numpy()
    np.testing.assert_allclose(got, irdro_weights(losses, temperature), rtol=1e-6, atol=1e-12)
    assert np.isfinite(got).all() and got.mean() == pytest.approx(1.0)
