"""Scoring stage: run the base model over pre-training shards and write per-sample losses to Parquet."""

from typing import TYPE_CHECKING

from scoring.lazy import lazy_exports

_EXPORTS = {
    "HardfocusError": "scoring.errors",
    "ScoreConfig": "scoring.config",
    "ScoreManifest": "scoring.manifest",
    "ScoreResult": "scoring.job",
    "Scorer": "scoring.scorer",
    "score": "scoring.job",
}
__all__ = ["HardfocusError", "ScoreConfig", "ScoreManifest", "ScoreResult", "Scorer", "score"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from scoring.config import ScoreConfig
    from scoring.errors import HardfocusError
    from scoring.job import ScoreResult, score
    from scoring.manifest import ScoreManifest
    from scoring.scorer import Scorer
