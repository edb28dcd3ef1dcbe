"""Packed batches (padding-free): per-sample losses, weighted losses and gradients equal the padded batch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.helpers import max_param_diff, mixed_length_sequences, parameters, small_config, write_selected
from training import train
from training.collator import PackedCollator, WeightedCollator
from training.weighting import StepWeighter, per_sample_nll, per_sample_nll_packed


def rows(n: int = 7, seed: int = 3) -> list[dict]:
    seqs = mixed_length_sequences(n, vocab=290, seed=seed)
    out = []
    for i, s in enumerate(seqs):
        spans = None if i % 2 else [{"start": len(s) // 2, "stop": len(s)}]  # conversations and plain text
        out.append({"input_ids": s, "weight": 0.5 + i / 7, "loss_spans": spans})
    return out


def reference_nll(model, batch_rows: list[dict], max_seq_len: int) -> torch.Tensor:
    """Each sample alone through the model (no padding, no packing): its mean NLL over its own targets."""
    losses = []
    for r in batch_rows:
        one = WeightedCollator(pad_token_id=0, max_seq_len=max_seq_len)([r])
        logits = model(input_ids=one["input_ids"]).logits
        losses.append(per_sample_nll(logits, one["labels"])[0][0])
    return torch.stack(losses)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("max_seq_len", [512, 20])  # 20: longer rows are cut, spans clipped
def test_packed_and_padded_per_sample_losses_equal_each_alone(tiny_model_dir, attention, max_seq_len):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    batch_rows = rows()
    padded = WeightedCollator(pad_token_id=0, max_seq_len=max_seq_len)(batch_rows)
    packed = PackedCollator(pad_token_id=0, max_seq_len=max_seq_len)(batch_rows)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))  # no padding at all
    with torch.no_grad():
        alone = reference_nll(model, batch_rows, max_seq_len)
        pad_loss = per_sample_nll(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits,
                                  padded["labels"])[0]
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False)
        pack_loss, n_tokens = per_sample_nll_packed(out.logits, packed["labels"], packed["sample_index"], len(batch_rows))
    torch.testing.assert_close(pack_loss, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pad_loss, alone, rtol=1e-5, atol=1e-5)
    assert n_tokens.tolist() == (padded["labels"][:, 1:] != -100).sum(1).tolist()
    assert torch.equal(packed["weight"], padded["weight"])


@pytest.mark.parametrize("online", [None, "irdro"])
def test_the_weighted_loss_and_its_gradient_of_a_packed_batch_equal_the_padded_ones(tiny_model_dir, online):
    batch_rows = rows(8, seed=5)
    results = {}
    for name, collator in (("padded", WeightedCollator), ("packed", PackedCollator)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        batch = collator(pad_token_id=0, max_seq_len=512)(batch_rows)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       position_ids=batch.get("position_ids"), use_cache=False).logits
        if name == "packed":
            losses = per_sample_nll_packed(logits, batch["labels"], batch["sample_index"], 8)[0]
        else:
            losses = per_sample_nll(logits, batch["labels"])[0]
        weighter = StepWeighter(use_static=True, online=online, temperature=0.5)
        weighter.start_step([8])
        plan = weighter.plan(losses.detach(), batch["weight"])
        loss = (plan.coef * losses).sum()
        loss.backward()
        results[name] = (loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(results["packed"][0], results["padded"][0], rtol=1e-5, atol=1e-6)
    assert max_param_diff(results["packed"][1], results["padded"][1]) < 1e-5
    assert max(float(g.abs().max()) for g in results["padded"][1].values()) > 1e-3  # a real gradient


@pytest.mark.parametrize("weighting,window", [("static", 1), ("static+online", 2)])
def test_training_packed_lands_on_the_parameters_of_training_padded(tiny_model_dir, tmp_path, weighting, window):
    """The same batches (random order) padded or packed, with the online window's softmax over 2 micro-batches."""
    seqs = mixed_length_sequences(24, vocab=290, seed=8)
    data = write_selected(tmp_path / "sel", seqs, weights=np.linspace(0.5, 1.5, 24).tolist())
    common = dict(weighting=weighting, online_window=window, max_steps=3, temperature=0.5, optim="sgd",
                  learning_rate=0.5)
    padded = train(small_config([data], tmp_path / "padded", batching="random", **common, model=tiny_model_dir), progress=False)
    packed = train(small_config([data], tmp_path / "packed", batching="packed", **common, model=tiny_model_dir), progress=False)
    base = parameters(tiny_model_dir)
    assert max_param_diff(parameters(padded.output), base) > 1e-3
    assert max_param_diff(parameters(packed.output), parameters(padded.output)) < 1e-5
    assert packed.final_loss == pytest.approx(padded.final_loss, rel=1e-5)


def test_packed_rows_cut_at_max_seq_len_and_spans_beyond_the_cut_give_finite_losses(tiny_model_dir):
    """Packed with a row longer than ``max_seq_len`` (cut), a row whose only span lies beyond the cut (no target:
    loss 0, no gradient) and a batch of one such row: the losses equal the padded batch's, nothing is NaN."""
    from transformers import AutoModelForCausalLM

    from training.collator import PackedCollator, WeightedCollator
    from training.weighting import per_sample_nll, per_sample_nll_packed

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = np.random.default_rng(3)
    rows = [{"input_ids": rng.integers(3, 290, 40).tolist(), "weight": 1.0, "loss_spans": None},
            {"input_ids": rng.integers(3, 290, 30).tolist(), "weight": 2.0, "loss_spans": [{"start": 20, "stop": 30}]},
            {"input_ids": rng.integers(3, 290, 6).tolist(), "weight": 1.0, "loss_spans": None}]
    for batch in (rows, rows[1:2]):
        padded = WeightedCollator(pad_token_id=0, max_seq_len=16)(batch)
        packed = PackedCollator(pad_token_id=0, max_seq_len=16)(batch)
        assert packed["input_ids"].shape[1] == sum(min(len(r["input_ids"]), 16) for r in batch)
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        losses, n = per_sample_nll_packed(logits, packed["labels"], packed["sample_index"], len(batch))
        pad = per_sample_nll(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits,
                             padded["labels"])[0]
        assert torch.isfinite(losses).all()
        torch.testing.assert_close(losses, pad, rtol=1e-5, atol=1e-5)
        target_free = [i for i, r in enumerate(batch) if r["loss_spans"]]
        assert all(float(losses[i].detach()) == 0.0 and int(n[i]) == 0 for i in target_free)
        (losses * packed["weight"]).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
