"""Build the model, the Trainer arguments and the ``WeightedTrainer``: shared by in-process and Ray Train runs."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from transformers.utils import logging as hf_logging

from hardfocus.tokenizers import pad_token_id
from training.checkpoints import MarkComplete, checkpoint_step
from training.collator import PackedCollator, WeightedCollator
from training.config import TrainConfig
from training.output import CHECKPOINTS, TRAIN_LOG
from training.stream import TrainingStream, WindowSource
from training.trainer import JsonLogCallback, WeightedTrainer
from training.weighting import StepWeighter

log = logging.getLogger(__name__)


def flash_attention_available() -> bool:
    """flash_attention_2 needs a GPU and the ``flash_attn`` package."""
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def batching(cfg: TrainConfig, bf16: bool) -> str:
    """grouped, packed or random: ``auto`` packs where flash attention runs variable-length sequences natively (a
    GPU with ``flash_attn``, under bf16 autocast) and groups by length elsewhere (on a CPU, SDPA computes a packed
    row's whole block-diagonal mask: slower than the few padded positions grouping leaves; flex attention has no
    backward there; benchmarks/results/training_speed.md)."""
    if cfg.batching != "auto":
        return cfg.batching
    return "packed" if bf16 and flash_attention_available() else "grouped"


def attention_implementation() -> str:
    return "flash_attention_2" if flash_attention_available() else "sdpa"


def make_weighter(cfg: TrainConfig) -> StepWeighter:
    return StepWeighter(
        use_static=cfg.uses_static,
        online=cfg.online_method if cfg.uses_online else None,
        temperature=cfg.temperature,
        online_window=cfg.online_window if cfg.uses_online else 1,
        drop_top=cfg.online_drop_top,
    )


def training_arguments(cfg: TrainConfig, bf16: bool, progress: bool, with_eval: bool, **overrides) -> TrainingArguments:
    """The Trainer's arguments from the config; checkpoints go to ``<output>/checkpoints``."""
    eval_steps = cfg.eval_steps or cfg.logging_steps
    kwargs = dict(
        output_dir=str(Path(cfg.output) / CHECKPOINTS),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps,
        optim=cfg.optim,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(round(cfg.warmup_ratio * cfg.max_steps)),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # also what lets bf16 autocast run on a CPU
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and stops the run: trainer.FiniteSteps), not hidden
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if with_eval else "no",
        eval_steps=eval_steps if with_eval else None,
        report_to="none",
        remove_unused_columns=False,  # the collator's 'weight' is not a model argument
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        ignore_data_skip=True,  # a resumed training.stream.TrainingStream starts at its step's batch itself
    )
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        kwargs["tf32"] = True  # fp32 matmuls (what autocast leaves in fp32) on the tensor cores
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def load_base(model_path: str, bf16: bool = False):
    """Model in fp32 (master weights; bf16 is autocast) and its tokenizer; flash attention where installed and the
    run is under bf16 autocast (it takes no fp32 inputs), the model's default attention otherwise."""
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    flash = bf16 and attention_implementation() == "flash_attention_2"
    # else transformers' own choice: SDPA where the model supports it, eager where not (Gemma 2, GPT-Neo, BLOOM, ...)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 **({"attn_implementation": "flash_attention_2"} if flash else {}))
    return model, tokenizer


def build_trainer(
    cfg: TrainConfig,
    model_path: str,
    args: TrainingArguments,
    train_source: WindowSource | None,
    eval_dataset=None,
    extra_callbacks: list | None = None,
    resume: str | None = None,
) -> WeightedTrainer:
    """The Trainer over a :class:`training.stream.TrainingStream` of ``train_source``'s rows (None: a Trainer that
    only evaluates); resuming from the checkpoint ``resume``, the stream starts at the batch after its step's."""
    model, tokenizer = load_base(model_path, bf16=args.bf16)
    how = batching(cfg, args.bf16)
    kind = PackedCollator if how == "packed" else WeightedCollator
    collator = kind(pad_token_id=pad_token_id(tokenizer), max_seq_len=cfg.max_seq_len)  # evaluation's
    stream = None
    if train_source is not None:  # its own collator: what it counts (tokens, positions, cuts) is training's alone
        stream = TrainingStream(train_source, kind(pad_token_id=pad_token_id(tokenizer), max_seq_len=cfg.max_seq_len),
                                cfg.batch_size, cfg.shuffle_buffer, cfg.seed,
                                "grouped" if how == "grouped" else "random", cfg.max_seq_len,
                                start_batch=checkpoint_step(resume) * cfg.accumulation_steps if resume else 0)
        log.info("training batches: %s (%d samples each, shuffled in windows of %d rows)", how, cfg.batch_size,
                 stream.window_rows)
    return WeightedTrainer(
        model=model,
        args=args,
        train_dataset=stream,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        weighter=make_weighter(cfg),
        # MarkComplete before the extra callbacks: Ray's report copies a checkpoint once it is marked complete
        callbacks=[JsonLogCallback(Path(cfg.output) / TRAIN_LOG), MarkComplete(), *(extra_callbacks or [])],
    )
