"""The attention a model is loaded with for training (training/build.py): flash attention only under bf16
autocast, the model's default where it has no SDPA, packed batches refused for a model whose attention mixes the
samples of a packed row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hardfocus.errors import HardfocusError
from tests.training.helpers import (
    max_param_diff,
    mixed_length_sequences,
    parameters,
    small_config,
    train_with,
    write_selected,
)


def test_an_fp32_run_does_not_load_flash_attention(tiny_model_dir, tmp_path, monkeypatch):
    """``training.build.load_base`` loads the model with ``attn_implementation="flash_attention_2"`` whenever a GPU
    and the ``flash_attn`` package are there, whatever the precision. The model is held in fp32 (master weights);
    with ``--precision fp32`` (or ``auto`` on a GPU without bf16: V100, T4) there is no autocast, so the query, key
    and value reach flash attention in fp32 (transformers' ``get_target_dtype`` keeps the weights' fp32), which
    flash attention refuses ("FlashAttention only support fp16 and bf16 data type"): every such run fails at its
    first step (and on pre-Ampere GPUs flash attention 2 does not run at all). Expected: flash attention only for a
    run under bf16 autocast (on a GPU that runs it), SDPA otherwise (and ``auto`` batching then not packed, or packed
    on SDPA)."""
    import training.build
    from training.build import build_trainer, training_arguments

    monkeypatch.setattr(training.build, "flash_attention_available", lambda: True)  # a GPU machine with flash_attn
    asked: list[str | None] = []
    real = training.build.AutoModelForCausalLM.from_pretrained

    def load(path, **kwargs):
        asked.append(kwargs.get("attn_implementation"))
        return real(path, **{**kwargs, "attn_implementation": "sdpa"})  # what this CPU can load

    monkeypatch.setattr(training.build.AutoModelForCausalLM, "from_pretrained", load)
    data = write_selected(tmp_path / "sel", mixed_length_sequences(8, vocab=290, seed=1))
    cfg = small_config([data], tmp_path / "out", precision="fp32")
    args = training_arguments(cfg, bf16=False, progress=False, with_eval=False)
    build_trainer(cfg, tiny_model_dir, args, None)
    assert asked == [asked[0]] and asked[0] != "flash_attention_2", \
        f"an fp32 run (no autocast) loads the model with {asked[0]}"


def _tiny_checkpoint(tiny_model_dir: str, path: Path, kind: str, **config) -> str:
    """A 2-layer model of architecture ``kind`` (random weights) with the tiny model's tokenizer."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(kind, vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               **config)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    for name in Path(tiny_model_dir).iterdir():
        if "token" in name.name:
            shutil.copy(name, path / name.name)
    return str(path)


@pytest.fixture(scope="module")
def tiny_opt_dir(tiny_model_dir, tmp_path_factory) -> str:
    """facebook/opt-*'s architecture (learned positions; SDPA supported)."""
    return _tiny_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("tiny-opt") / "model", "opt", hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32,
                            max_position_embeddings=512)


def test_packed_training_of_an_opt_model_equals_padded_training(tiny_opt_dir, tmp_path):
    """``--batching packed`` (and ``auto`` on a GPU with flash attention) assumes every model keeps the samples of a
    packed row apart given restarting ``position_ids`` and no attention mask. Llama, Qwen2, Mistral, GPT-2, GPT-NeoX
    do (packed per-sample losses equal each sample alone, ~1e-7); OPT does not: the samples of a packed row see
    each other (``OPTDecoder`` calls ``create_causal_mask`` without the ``position_ids``, so no packed sequences are
    found and the mask is causal over the whole row), per-sample losses differ by ~2e-2 from
    the padded batch's on a tiny OPT, and a packed run lands on other weights than the padded run of the same batches,
    silently (the README says packed losses are each sample's own). Expected: packed batching refused (or ``auto``
    falling back to grouped) for a model whose packed losses are not its padded ones, e.g. checked on the first
    batch, or an allow-list of architectures known to honour packed positions."""
    seqs = mixed_length_sequences(16, vocab=290, seed=8)
    data = write_selected(tmp_path / "sel", seqs, weights=np.linspace(0.5, 1.5, 16).tolist())
    common = dict(weighting="static", max_steps=2, optim="sgd", learning_rate=0.5)
    padded = train_with(small_config([data], tmp_path / "padded", batching="random", **common), tiny_opt_dir)
    assert max_param_diff(parameters(padded.output), parameters(tiny_opt_dir)) > 1e-3  # padded trains as ever
    # fixed: the first packed batch's samples are checked alone, and packing is refused for this model, in one line
    with pytest.raises(HardfocusError, match="OPTForCausalLM's attention does not keep packed samples apart") as refused:
        train_with(small_config([data], tmp_path / "packed", batching="packed", **common), tiny_opt_dir)
    assert "\n" not in str(refused.value) and "--batching grouped" in str(refused.value)
    assert not (tmp_path / "packed" / "model.safetensors").exists()


@pytest.mark.parametrize("kind,config", [
    ("gemma2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64, head_dim=16)),
    ("gpt_neo", dict(hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global"], 2]],
                     max_position_embeddings=512)),
])
def test_a_model_without_sdpa_attention_still_trains(tiny_model_dir, tmp_path, kind, config):
    """``training.build.load_base`` used to load the base model with transformers' default attention (SDPA where the
    architecture has it, else eager); it now always asks for ``attn_implementation="sdpa"`` (or flash attention), and
    transformers refuses that for architectures without SDPA support: ``ValueError: Gemma2ForCausalLM does not
    support an attention implementation through torch.nn.functional.scaled_dot_product_attention yet`` (so do
    GPT-Neo, BLOOM, MPT, XGLM in transformers 5.24). Training google/gemma-2-*, EleutherAI/gpt-neo-* or
    bigscience/bloom-* now dies with a traceback after the data was checked, whatever ``--batching``. Expected: the
    run trains (SDPA where the model has it, the model's default otherwise; packed refused where neither keeps
    packed samples apart)."""
    model = _tiny_checkpoint(tiny_model_dir, tmp_path / kind, kind, **config)
    data = write_selected(tmp_path / "sel", mixed_length_sequences(8, vocab=290, seed=2))
    result = train_with(small_config([data], tmp_path / "out", max_steps=1, batching="grouped"), model)
    assert result.steps == 1
