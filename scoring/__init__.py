"""Scoring stage: run the base model over pre-training shards and write per-sample losses to Parquet."""

from scoring.config import ScoreConfig
from scoring.errors import HardfocusError
from scoring.job import ScoreResult, score
from scoring.manifest import ScoreManifest
from scoring.scorer import Scorer

__all__ = ["HardfocusError", "ScoreConfig", "ScoreManifest", "ScoreResult", "Scorer", "score"]
