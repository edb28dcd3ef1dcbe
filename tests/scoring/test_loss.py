"""Batched, padded, chunked scoring equals each document's own unpadded model loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from scoring.loss import batch_nll, token_budget_batches
from scoring.scorer import Scorer

LENGTHS = [2, 3, 17, 64, 5, 250, 40, 9, 128]


def _docs(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).astype(np.int32) for n in lengths]


def _own_loss(model, seq: np.ndarray, labels: np.ndarray | None = None) -> float:
    ids = torch.from_numpy(seq.astype(np.int64)).unsqueeze(0)
    lab = ids if labels is None else torch.from_numpy(labels.astype(np.int64)).unsqueeze(0)
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=lab).loss)


@pytest.fixture(scope="module")
def fp32_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_fp32_batched_chunked_equals_per_sample_loss(tiny_model_dir, fp32_model):
    scorer = Scorer(tiny_model_dir, dtype="float32", device="cpu", token_budget=300, chunk_tokens=7)
    docs = _docs(fp32_model.config.vocab_size)
    assert len(token_budget_batches([len(d) for d in docs], 300)) > 2  # several padded micro-batches
    nll_sum, n_tokens = scorer.score(docs)
    assert n_tokens.tolist() == [n - 1 for n in LENGTHS]
    for doc, s, n in zip(docs, nll_sum, n_tokens):
        assert s / n == pytest.approx(_own_loss(fp32_model, doc), abs=1e-5)


def test_result_does_not_depend_on_budget_or_chunk(tiny_model_dir):
    docs = _docs(300)
    a = Scorer(tiny_model_dir, dtype="float32", device="cpu", token_budget=10_000, chunk_tokens=4096).score(docs)[0]
    b = Scorer(tiny_model_dir, dtype="float32", device="cpu", token_budget=64, chunk_tokens=3).score(docs)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5)


# bf16 tolerance: bf16 keeps 8 bits of mantissa, so padding and batch shape change the rounding of
# the hidden states. On this fixture the per-sample mean loss was measured within 5e-4 nats of the
# same model run unpadded in bf16 and within 1.4e-3 of the fp32 model; the bounds leave 4x-10x room.
# (SmolLM2-135M, 30 layers: see tests/scoring/test_real_model.py.)
BF16_VS_BF16 = 5e-3
BF16_VS_FP32 = 1e-2


def test_bf16_tolerance(tiny_model_dir, fp32_model):
    bf16_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    scorer = Scorer(tiny_model_dir, dtype="bfloat16", device="cpu", token_budget=300, chunk_tokens=7)
    docs = _docs(fp32_model.config.vocab_size)
    nll_sum, n_tokens = scorer.score(docs)
    ours = nll_sum / n_tokens
    own_bf16 = np.array([_own_loss(bf16_model, d) for d in docs])
    own_fp32 = np.array([_own_loss(fp32_model, d) for d in docs])
    assert np.max(np.abs(ours - own_bf16)) < BF16_VS_BF16
    assert np.max(np.abs(ours - own_fp32)) < BF16_VS_FP32


def test_a_long_document_is_accumulated_in_fp32_not_bf16(tiny_model_dir, fp32_model):
    """1,800 token losses of ~5.7 nats sum to ~10,000, where bf16's spacing is 64: a bf16 running sum would be
    off by tens of nats; the model's own loss (fp32 cross-entropy over bf16 logits) is the reference."""
    bf16_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    scorer = Scorer(tiny_model_dir, dtype="bfloat16", device="cpu", token_budget=4096, chunk_tokens=256)
    (doc,) = _docs(fp32_model.config.vocab_size, lengths=[1800])
    (nll_sum,), (n_tokens,) = scorer.score([doc])
    assert n_tokens == 1799 and nll_sum > 8000
    assert abs(nll_sum - _own_loss(bf16_model, doc) * n_tokens) < 2.0  # nats over the whole document


def test_loss_mask_scores_only_marked_targets(tiny_model_dir, fp32_model):
    """A general per-token mask (as instruction data will need) equals labels=-100 on the unmarked tokens."""
    docs = _docs(fp32_model.config.vocab_size, lengths=[30, 12, 50])
    rng = np.random.default_rng(3)
    masks = [rng.random(len(d)) < 0.5 for d in docs]
    for m in masks:
        m[-1] = True  # at least one scored target per document
    sums, counts = batch_nll(fp32_model, docs, masks, chunk_tokens=5, pad_id=0)
    for doc, mask, s, n in zip(docs, masks, sums, counts):
        labels = np.where(mask, doc, -100)
        labels[0] = -100
        assert n == int(mask[1:].sum())
        assert s / n == pytest.approx(_own_loss(fp32_model, doc, labels), abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=0, max_size=60), st.integers(1, 2000))
def test_token_budget_batches_cover_every_index_once_within_budget(lengths, budget):
    batches = token_budget_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1
    # longest first: padding waste stays small because neighbours have similar lengths
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


@pytest.mark.slow
def test_compiled_scorer_equals_per_sample_loss(tiny_model_dir, fp32_model):
    """torch.compile path: batches of one (padded with a dummy) and a short last chunk included."""
    docs = _docs(fp32_model.config.vocab_size, lengths=[250, 3, 40, 17, 90])
    scorer = Scorer(tiny_model_dir, dtype="float32", device="cpu", token_budget=260, chunk_tokens=64, compiled=True)
    assert len(token_budget_batches([len(d) for d in docs], 260)[0]) == 1  # the 250-token document alone
    nll_sum, n_tokens = scorer.score(docs)
    for doc, s, n in zip(docs, nll_sum, n_tokens):
        assert n == len(doc) - 1
        assert s / n == pytest.approx(_own_loss(fp32_model, doc), abs=1e-5)


def test_batches_minimise_padding_plus_overhead():
    """Against brute force over every split of the sorted order into contiguous batches."""
    from itertools import combinations

    rng = np.random.default_rng(5)
    for _ in range(30):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 9))).tolist()
        budget, overhead = int(rng.integers(60, 200)), int(rng.integers(0, 40))
        desc = sorted(lengths, reverse=True)

        def cost(cuts, desc=desc, budget=budget, overhead=overhead):
            bounds = [0, *cuts, len(desc)]
            runs = [desc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            if any(len(r) * r[0] > budget and len(r) > 1 for r in runs):
                return float("inf")
            return sum(len(r) * r[0] + overhead for r in runs)

        best = min(cost(c) for k in range(len(desc)) for c in combinations(range(1, len(desc)), k))
        got = token_budget_batches(lengths, budget, overhead)
        assert sum(len(b) * max(lengths[i] for i in b) + overhead for b in got) == best
