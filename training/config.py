"""Typed configuration of the training stage; the same keys in TOML (``[train]``), flags and code."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from hardfocus.sample_format import SampleFormat

Weighting = Literal["none", "static", "online", "static+online"]
Batching = Literal["auto", "grouped", "packed", "random"]


class TrainConfig(SampleFormat):
    """Everything ``hardfocus train`` needs. Unknown keys are an error, and so is NaN or inf for any number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: list[str] = Field(min_length=1, description="selected/ or scores/ directories (or raw shards, tokenised here)")
    output: str = Field(
        description="directory for the trained checkpoint, its checkpoints/ and train_log.jsonl; a URL (s3://...) "
        "trains in a local staging directory and uploads the finished model there"
    )
    model: str = Field("smollm2-135m", description="base model: hub id, local checkpoint dir, .gguf file, or 'smollm2-135m'")
    weighting: Weighting = Field(
        "static",
        description="none: ERM; static: the selected/ weights; online: IR-DRO from the current losses; static+online: both",
    )
    online_method: Literal["irdro", "midrank"] = Field(
        "irdro", description="online weights: irdro = B*softmax(loss/temperature); midrank = drop the batch's top losses"
    )
    temperature: float = Field(1.0, gt=0, description="online IR-DRO temperature r (the reference code's kl_reg)")
    online_window: int = Field(
        1, ge=1, description="micro-batches whose losses share one online softmax (the reference's --patience); "
        "> 1 accumulates gradients over the window"
    )
    online_drop_top: float = Field(0.125, gt=0, lt=1, description="midrank: fraction of each micro-batch's highest losses dropped")
    max_steps: int = Field(100, ge=1, description="optimiser steps")
    batch_size: int = Field(8, ge=1, description="samples per micro-batch (per worker)")
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, description="micro-batches per optimiser step; default: online_window"
    )
    max_seq_len: int = Field(512, ge=2, description="tokens per sample; longer samples are cut")
    batching: Batching = Field(
        "auto", description="how samples become micro-batches: grouped = of similar length (little padding), packed = "
        "concatenated into one row (no padding), random = as they come; auto = packed on a GPU with flash attention, "
        "else grouped (the faster on a CPU, benchmarks/results/training_speed.md)"
    )
    shuffle_buffer: int = Field(
        65536, ge=1, description="rows read and shuffled together (training streams the data: memory holds one such "
        "window of token ids)"
    )
    optim: str = Field("adamw_torch_fused", description="a transformers optimizer name: adamw_torch_fused (AdamW in "
                       "one kernel per parameter group, CPU and GPU: transformers' default), adamw_torch, sgd, ...")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate")
    lr_scheduler: str = Field("cosine", description="a transformers scheduler name: cosine, linear, constant, ...")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps of linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 = off)")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the model init RNGs and the data order")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast where supported, else fp32")
    logging_steps: int = Field(10, ge=1, description="log loss and weight statistics every N steps")
    save_steps: int = Field(50, ge=1, description="write a resumable checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    keep_checkpoints: bool = Field(
        False, description="keep checkpoints/ (model + optimizer state, ~12x params bytes each) after the final model "
        "is written; by default they are removed then, as nothing is left to resume"
    )
    eval_data: list[str] = Field(default_factory=list, description="held-out selected/ or scores/ directories: loss every eval_steps")
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N steps; default: logging_steps")
    resume: Literal["auto", "never"] = Field("auto", description="auto = continue from the newest checkpoint in output")
    overwrite: bool = Field(False, description="replace a training run with different settings in output")
    ray_workers: int = Field(0, ge=0, description="0 = train in this process; N = Ray Train TorchTrainer with N workers")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per Ray Train worker")
    use_gpu: bool = Field(False, description="one GPU per Ray Train worker")
    ray_address: str | None = Field(None, description="Ray cluster address; default $RAY_ADDRESS, else a local Ray")
    group_column: str | None = Field(None, description="raw shards only: the group column")

    @model_validator(mode="after")
    def _window_fits_accumulation(self) -> TrainConfig:
        if self.ray_workers and self.eval_data:
            raise ValueError("eval_data is evaluated in-process only, not under Ray Train (ray_workers > 0): drop it "
                             "and compare the models with `hardfocus eval`, or train in this process")
        accumulation = self.accumulation_steps
        if self.uses_online and self.online_window > 1:
            if self.online_method == "midrank":
                raise ValueError("online midrank ranks within one micro-batch; use online_window = 1 and a larger batch_size")
            if accumulation != self.online_window:
                raise ValueError(
                    f"online_window ({self.online_window}) must equal gradient_accumulation_steps ({accumulation}): "
                    "the window is the set of micro-batches of one optimiser step"
                )
        return self

    @property
    def accumulation_steps(self) -> int:
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        return self.online_window if self.uses_online else 1

    @property
    def uses_online(self) -> bool:
        return self.weighting in ("online", "static+online")

    @property
    def uses_static(self) -> bool:
        return self.weighting in ("static", "static+online")
