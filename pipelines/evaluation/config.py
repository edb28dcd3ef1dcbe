"""Typed configuration of ``hardfocus eval`` (``[eval]`` in TOML, flags, code): light to import, for the CLI."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from hardfocus.sample_format import LongDocuments, SampleFormat, check_long_documents


class EvalConfig(SampleFormat):
    """Everything ``hardfocus eval`` needs: held-out text shards and the models to compare on them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    models: list[str] = Field(
        min_length=1, description="models to compare, first = baseline; NAME=SPEC names one (SPEC: dir, hub id, .gguf, alias)"
    )
    data: list[str] = Field(min_length=1, description="held-out shards (files, directories, globs), never trained on")
    output: str = Field(description="directory for eval.json and each model's held-out scores")
    group_column: str | None = Field("group", description="column naming each document's group (domain)")
    max_tokens: int = Field(1024, ge=2, description="longer documents are truncated (the same cut for every model), "
                            "or cut into windows of this many tokens (long_documents)")
    long_documents: LongDocuments = Field(
        "truncate", description="a held-out text longer than max_tokens: truncate (judge its prefix) or windows "
        "(score every token, in windows: a model judged on whole documents)"
    )
    window_context: int = Field(0, ge=0, description="windows: tokens of the text before each later window it reads first")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="auto = bf16 where native, else float32")
    executor: Literal["ray", "local"] = Field("local", description="local (in-process) or ray (a Ray Data job per model)")

    @model_validator(mode="after")
    def _windows_fit(self) -> EvalConfig:
        check_long_documents(self.format, self.long_documents, self.window_context, self.max_tokens)
        return self

    def named_models(self) -> list[tuple[str, str]]:
        """(name, spec) pairs; unnamed specs are named by their last path component, made unique."""
        named, seen = [], {}
        for entry in self.models:
            literal = entry.startswith(("/", ".")) or os.path.exists(entry)  # a path that holds '=' is still a path
            name, _, spec = entry.partition("=") if "=" in entry and not literal else ("", "", entry)
            name = name or spec.rstrip("/").split("/")[-1].removesuffix(".gguf") or "model"
            seen[name] = seen.get(name, 0) + 1
            named.append((name if seen[name] == 1 else f"{name}-{seen[name]}", spec))
        return named
