"""Typed configuration of the selection stage; the same keys in TOML (``[select]``), flags and code."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SelectConfig(BaseModel):
    """Everything ``hardfocus select`` needs. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scores: list[str] = Field(min_length=1, description="scores/ directories written by `hardfocus score`")
    output: str = Field(description="the selected/ directory to write")
    score: Literal["loss", "ifd", "excess", "bpb"] = Field(
        "loss",
        description="what ranks and weights the samples: loss (nats/token); ifd (loss with / without the prompt: "
        "scores from `score --ifd`); excess (loss minus a --reference model's, nats/token, or bits/byte across "
        "tokenizers); bpb (bits per byte)",
    )
    reference: list[str] = Field(
        default_factory=list, description="scores/ directories of a reference model on the same inputs (score excess)"
    )
    max_ifd: float = Field(
        1.0, gt=0, description="score ifd: exclude rows with IFD >= this (the prompt does not help); inf keeps them"
    )
    by: Literal["window", "document"] = Field(
        "window",
        description="on windowed scores (score --long-documents windows): rank windows (each a sample, as the paper's "
        "fixed-length training sequences) or whole documents by their token-weighted score (a document kept or "
        "dropped whole, each of its windows weighted by the document's score)",
    )
    drop_top: float = Field(0.1, ge=0, lt=1, description="fraction of highest-scoring samples dropped as noise")
    keep: float = Field(0.5, gt=0, le=1, description="fraction kept after the dropped band (moderately high score)")
    per_group: bool = Field(False, description="rank and weight within each group instead of globally")
    weighting: Literal["irdro", "none"] = Field("irdro", description="irdro: softmax(score / temperature); none: 1")
    temperature: float = Field(
        1.0, gt=0, description="IR-DRO temperature r (the reference code's kl_reg), in the score's units"
    )
    max_weight: float | None = Field(None, ge=1, description="clip weights at this value, renormalising to mean 1")
    report: bool = Field(True, description="write report.html with its plots")
    ray_address: str | None = Field(
        None,
        description="Ray cluster to write the selection's parts on (a Ray Data job; the output on storage every node "
        "sees); default $RAY_ADDRESS, else (or 'local') a thread pool in this process. Not part of the selection: "
        "the same bytes either way",
    )
    overwrite: bool = Field(
        False, description="replace a selection made with other settings (the same selection of the same scores is kept)"
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> SelectConfig:
        if self.drop_top + self.keep > 1 + 1e-12:
            raise ValueError(f"drop_top + keep = {self.drop_top + self.keep:g} > 1: the bands overlap")
        if self.score == "excess" and not self.reference:
            raise ValueError("score excess needs the reference model's scores/ directory: pass --reference DIR")
        if self.reference and self.score != "excess":
            raise ValueError(f"a reference is only used by score excess (score is {self.score}); drop --reference")
        if self.by == "document" and self.score == "ifd":
            raise ValueError("score ifd cannot rank by document: IFD is for conversations, windows are plain text; "
                             "use --by window or another --score")
        return self
