"""Typed configuration of the scoring stage; the same keys in TOML (``[score]``), flags and code."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from hardfocus.models import SMOLLM2_ALIAS
from hardfocus.readers.shard import MAX_ROW_BYTES
from hardfocus.sample_format import LongDocuments, SampleFormat, check_long_documents


class ScoreConfig(SampleFormat):
    """Everything ``hardfocus score`` needs. Unknown keys are an error, and so is NaN or inf for any number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    inputs: list[str] = Field(min_length=1, description="shard files, directories or globs (local or fsspec URLs)")
    output: str = Field(description="the scores/ directory to write (local path or fsspec URL)")
    id_column: str | None = Field(None, description="unique sample id column; default '<shard>#<row>'")
    group_column: str | None = Field(None, description="domain/source column, carried into the scores")
    model: str = Field(SMOLLM2_ALIAS, description="hub id, local checkpoint dir, .gguf file, or 'smollm2-135m'")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="auto = bf16 where the CPU/GPU computes it natively, else float32"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    max_tokens: int = Field(
        1024, ge=2, description="tokens per scored sequence: a longer text is truncated and flagged, or cut into windows "
        "(long_documents); a conversation loses whole leading turns"
    )
    long_documents: LongDocuments = Field(
        "truncate", description="a text longer than max_tokens: truncate (score its first max_tokens tokens) or windows "
        "(score every token: one row per window of at most max_tokens tokens, sample_id '<id>#w<k>'; format text)"
    )
    window_context: int = Field(
        0, ge=0, description="windows: tokens of the text before a window that it reads, unscored, ahead of its own "
        "(every window but the first), so its first tokens are not predicted cold; each token is still scored once"
    )
    add_special_tokens: bool = Field(
        True, description="let the tokenizer add BOS/EOS as the model was trained (text; a chat template adds its own)"
    )
    token_budget: int = Field(16384, ge=2, description="padded tokens per forward micro-batch")
    chunk_tokens: int = Field(256, ge=1, description="positions per logits chunk (memory = chunk x vocab)")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model; auto = on when each actor has >= 8 MiB of input to score"
    )
    rows_per_unit: int = Field(2000, ge=1, description="rows per resumable unit of work (one part file each)")
    max_row_bytes: int = Field(
        MAX_ROW_BYTES, ge=1, description="a row (JSON line, or a Parquet or Arrow row's sample cells) longer than this is not "
        "parsed: it gets an error status, so time and memory follow the unit, not one giant row"
    )
    on_error: Literal["record", "stop"] = Field(
        "record",
        description="a bad input row (invalid JSON, bad UTF-8, wrong type), a NaN loss, duplicate ids or an empty "
        "shard: record = status/warning and go on; stop = fail naming the file and row",
    )
    keep_input_ids: bool = Field(True, description="store input_ids so training never re-tokenises")
    ifd: bool = Field(
        False,
        description="also score each response without its prompt (behind the template's assistant header) and write "
        "IFD = loss with / loss without (formats prompt_response and messages)",
    )
    executor: Literal["ray", "local"] = Field("ray", description="ray (Ray actors: a Ray Data job, or one actor on a local Ray) or local (the same code in-process)")
    ray_address: str | None = Field(None, description="Ray cluster address; default $RAY_ADDRESS, else a local Ray")
    actors: int = Field(1, ge=1, description="scoring actors (one model each)")
    cpus_per_actor: float | None = Field(None, gt=0, description="default: 1 with a GPU, else all CPUs but one")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per scoring actor")
    resources_per_actor: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per scoring actor, e.g. {scorer = 1} to place one per node"
    )
    torch_threads: int | None = Field(None, ge=1, description="default: the actor's CPUs (all cores on local Ray)")
    overwrite: bool = Field(False, description="delete scores of a different configuration in the output dir")

    @model_validator(mode="after")
    def _ifd_needs_a_prompt(self) -> ScoreConfig:
        if self.ifd and self.format == "text":
            raise ValueError("ifd needs a prompt to condition on: use format prompt_response or messages")
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> ScoreConfig:
        check_long_documents(self.format, self.long_documents, self.window_context, self.max_tokens)
        return self
