"""Scoring stage: run the base model over pre-training shards and write per-sample losses to Parquet."""

from typing import TYPE_CHECKING

from hardfocus.lazy import lazy_exports

_EXPORTS = {
    "HardfocusError": "hardfocus.errors",
    "ScoreConfig": "scoring.config",
    "ScoreManifest": "hardfocus.contracts.scores",
    "ScoreResult": "scoring.job",
    "Scorer": "scoring.scorer",
    "score": "scoring.job",
}
__all__ = ["HardfocusError", "ScoreConfig", "ScoreManifest", "ScoreResult", "Scorer", "score"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from hardfocus.contracts.scores import ScoreManifest
    from hardfocus.errors import HardfocusError
    from scoring.config import ScoreConfig
    from scoring.job import ScoreResult, score
    from scoring.scorer import Scorer
